"""A cluster the roles bring up with TLS (hyperopt_mongodb_tls: true) on this machine: the CA and the
server certificate made on the control node with community.crypto, SecantusDB speaking only TLS, the
workers given the CA, and the URLs the facade publishes carrying ``?tls=true&tlsCAFile=…``. A real
fmin runs through plain MongoTrials; a plaintext client and a client trusting another CA are refused;
a second start changes nothing (no new certificate, no restart) and skips the TLS phase, which runs
again when a copy on the server host or the control node's record no longer matches.
"""

from __future__ import annotations

from pathlib import Path

import pymongo
import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID
from hyperopt.mongoexp import MongoTrials
from local_cluster import free_port, make_local_inventory, run_fmin
from pki import make_ca, make_leaf
from pymongo.errors import PyMongoError, ServerSelectionTimeoutError

from pyhoptcluster import HyperoptCluster

pytestmark = pytest.mark.integration


def test_the_roles_bring_up_a_tls_cluster_and_fmin_runs_over_it(tmp_path: Path) -> None:
    port = free_port()
    tls_dir = tmp_path / "tls"
    local = make_local_inventory(
        tmp_path, hyperopt_mongodb_port=port, hyperopt_mongodb_tls=True, hyperopt_mongodb_tls_dir=str(tls_dir)
    )
    cluster = HyperoptCluster(str(local.path))
    try:
        cluster.start(worker_count=2)
        ca = tls_dir / "ca.pem"
        url = cluster.mongo_trial_url
        assert url.endswith(f"@127.0.0.1:{port}/hyperopt/jobs?tls=true&tlsCAFile={ca}"), url.split("@")[-1]
        assert oct((tls_dir / "ca.key").stat().st_mode & 0o777) == "0o600"
        assert oct(tls_dir.stat().st_mode & 0o777) == "0o700"
        assert oct((local.state_dir / "tls" / "server.key").stat().st_mode & 0o777) == "0o600"
        # the workers were given the CA and connect over TLS: a real fmin through plain MongoTrials
        worker_conf = (local.worker_state_dir / "worker.conf").read_text()
        assert f"/hyperopt/jobs?tls=true&tlsCAFile={local.worker_state_dir}/server-ca.pem" in worker_conf

        def objective(x: float) -> float:
            return (x - 1.0) ** 2

        trials = run_fmin(url, "tls-cluster", 12, 2, objective)
        assert sum(r["status"] == "ok" for r in trials.results) == 12
        assert all(t.get("owner") for t in trials.trials)

        # a plaintext client is refused, and so is one that trusts another CA
        plain = pymongo.MongoClient("127.0.0.1", port, directConnection=True, serverSelectionTimeoutMS=1500)
        with pytest.raises(PyMongoError):
            plain.admin.command("ping")
        plain.close()
        other = tmp_path / "other-ca.pem"
        make_ca(other, "someone else's CA")
        wrong = url.replace(str(ca), str(other)) + "&serverSelectionTimeoutMS=1500"
        with pytest.raises(ServerSelectionTimeoutError, match=r"(?i)certificate"):
            MongoTrials(wrong)

        # a second start: same certificate, same server process
        pids = local.pids()
        cert = (tls_dir / "server-localhost.pem").read_bytes()
        cluster.start(worker_count=2)
        assert (tls_dir / "server-localhost.pem").read_bytes() == cert
        assert local.pids() == pids
        # ... and it skipped the TLS phase: the probe saw the copies, the record matched
        warm = cluster._master.runs[-1].output
        assert "Create the CA's private key" not in warm and "Copy the server's private key" not in warm
        # a key copy removed on the server host is put back, and the server restarts with it
        host_key = local.state_dir / "tls" / "server.key"
        host_key.unlink()
        cluster.start(worker_count=2)
        assert host_key.read_bytes() == (tls_dir / "server-localhost.key").read_bytes()
        assert oct(host_key.stat().st_mode & 0o777) == "0o600"
        assert local.pids()["hyperopt-mongodb"] != pids["hyperopt-mongodb"]
        assert (tls_dir / "server-localhost.pem").read_bytes() == cert
        # a record that no longer matches (certificates made for other names) runs the phase again:
        # the certificate still fits today's names, so it is kept and the record written anew
        record = tls_dir / "server-localhost.record.json"
        written = record.read_text()
        assert "PRIVATE" not in written and '"subject_alt_name"' in written
        record.write_text(written.replace("127.0.0.1", "192.0.2.1"))
        cluster.start(worker_count=2)
        assert "Create the CA's private key" in cluster._master.runs[-1].output
        assert record.read_text() == written
        assert (tls_dir / "server-localhost.pem").read_bytes() == cert
        # a fresh facade (a restarted notebook) attaches over TLS too
        assert HyperoptCluster(str(local.path)).status().server.up
    finally:
        cluster.cleanup()
        local.kill_leftovers()


def test_mutual_tls_gives_workers_and_driver_a_client_certificate_and_refuses_others(tmp_path: Path) -> None:
    port = free_port()
    tls_dir = tmp_path / "tls"
    local = make_local_inventory(
        tmp_path,
        hyperopt_mongodb_port=port,
        hyperopt_mongodb_tls=True,
        hyperopt_mongodb_tls_client_certs=True,
        hyperopt_mongodb_tls_dir=str(tls_dir),
    )
    cluster = HyperoptCluster(str(local.path))
    try:
        cluster.start(worker_count=2)
        ca, client = tls_dir / "ca.pem", tls_dir / "client.pem"
        url = cluster.mongo_trial_url
        assert url.endswith(f"?tls=true&tlsCAFile={ca}&tlsCertificateKeyFile={client}"), url.split("@")[-1]
        assert oct(client.stat().st_mode & 0o777) == "0o600"
        assert "PRIVATE KEY" in client.read_text() and "CERTIFICATE" in client.read_text()
        worker_client = local.worker_state_dir / "client.pem"
        assert oct(worker_client.stat().st_mode & 0o777) == "0o600"
        worker_conf = (local.worker_state_dir / "worker.conf").read_text()
        assert f"&tlsCertificateKeyFile={worker_client}" in worker_conf
        assert "require_client_cert = true" in (local.state_dir / "secantusd.toml").read_text()

        # the workers and the driver present theirs: a real fmin through plain MongoTrials
        def objective(x: float) -> float:
            return (x + 1.0) ** 2

        trials = run_fmin(url, "mutual-tls", 8, 2, objective)
        assert sum(r["status"] == "ok" for r in trials.results) == 8
        assert cluster.status().server.up  # the facade's own client presents it too

        # a client that trusts the CA but has no certificate is refused, as is one of another CA
        no_cert = url.split("&tlsCertificateKeyFile=")[0] + "&serverSelectionTimeoutMS=1500"
        with pytest.raises(PyMongoError):
            MongoTrials(no_cert)
        other = make_ca(tmp_path / "other-ca.pem", "someone else's CA")
        cert, key = make_leaf(tmp_path, "intruder", other, ExtendedKeyUsageOID.CLIENT_AUTH)
        intruder = tmp_path / "intruder-combined.pem"
        intruder.write_text(cert.read_text() + key.read_text())
        with pytest.raises(PyMongoError):
            MongoTrials(url.replace(str(client), str(intruder)) + "&serverSelectionTimeoutMS=1500")

        # a second start changes nothing: same client certificate, same processes
        pids, pem = local.pids(), client.read_bytes()
        cluster.start(worker_count=2)
        assert client.read_bytes() == pem
        assert local.pids() == pids
    finally:
        cluster.cleanup()
        local.kill_leftovers()
