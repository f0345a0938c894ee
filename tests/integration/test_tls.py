"""TLS through the hyperopt compatibility layer (issue 9): a real SecantusDB speaking only TLS, with
auth, and real ``pyhoptcluster-worker`` processes. ``MongoTrials`` and the workers take the options
from the URL (``?tls=true&tlsCAFile=…``, pyhoptcluster.compat.mongourl.client_options); so do the
URLs a cluster publishes (ClusterInfo). A plaintext client, a client that trusts another CA and, with
mutual TLS, a client without a certificate are refused.

The certificates are made here with ``cryptography`` (a CA, a server certificate for 127.0.0.1, a
client certificate, and a second, unrelated CA).
"""

from __future__ import annotations

import ipaddress
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pymongo
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from hyperopt.mongoexp import MongoTrials
from local_cluster import ROOT, free_port
from pki import make_ca, make_leaf
from pymongo.errors import PyMongoError, ServerSelectionTimeoutError
from worker_procs import objectives, run_fmin, write_config

from pyhoptcluster.control.state import ClusterInfo

pytestmark = pytest.mark.integration

USER, DB = "pyhoptcluster", "hyperopt"


@dataclass
class Pki:
    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    client_pem: Path  # certificate + key, as tlsCertificateKeyFile takes it


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d / "cluster-ca.pem", "cluster-ca")
    make_ca(d / "other-ca.pem", "other-ca")
    san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    server_cert, server_key = make_leaf(d, "server", ca, ExtendedKeyUsageOID.SERVER_AUTH, san)
    client_cert, client_key = make_leaf(d, "client", ca, ExtendedKeyUsageOID.CLIENT_AUTH)
    client_pem = d / "client-combined.pem"
    client_pem.write_bytes(client_cert.read_bytes() + client_key.read_bytes())
    client_pem.chmod(0o600)
    return Pki(d / "cluster-ca.pem", d / "other-ca.pem", server_cert, server_key, client_pem)


@dataclass
class TlsServer:
    port: int
    password: str
    proc: subprocess.Popen


def _start(binary: Path, tmp: Path, pki: Pki, mutual: bool) -> TlsServer:
    """A SecantusDB with auth that speaks only TLS; its user provisioned offline first (the role's
    files/secantus_user.py), so it never runs without auth."""
    storage, password = tmp / "db", secrets.token_urlsafe(24)
    pw_file = tmp / "pw"
    pw_file.write_text(password + "\n")
    pw_file.chmod(0o600)
    python = binary.with_name("python")
    subprocess.run(
        [
            str(python),
            str(ROOT / "roles/hyperopt_mongodb/files/secantus_user.py"),
            "--storage",
            str(storage),
            "--dbname",
            DB,
            "--username",
            USER,
            "--password-file",
            str(pw_file),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    port = free_port()
    argv = [
        str(binary),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--storage-path",
        str(storage),
        "--auth",
        "--tls-cert-file",
        str(pki.server_cert),
        "--tls-key-file",
        str(pki.server_key),
    ]
    if mutual:
        argv += ["--tls-ca-file", str(pki.ca), "--tls-require-client-cert"]
    log = open(tmp / "secantusd.log", "ab")  # closed below: the server keeps its own fd
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
    log.close()
    probe = pymongo.MongoClient(
        "127.0.0.1",
        port,
        tls=True,
        tlsCAFile=str(pki.ca),
        directConnection=True,
        serverSelectionTimeoutMS=250,
        **({"tlsCertificateKeyFile": str(pki.client_pem)} if mutual else {}),
    )
    deadline = time.monotonic() + 30
    try:
        while True:
            assert proc.poll() is None, (tmp / "secantusd.log").read_text()[-3000:]
            try:
                probe.admin.command("ping")
                break
            except PyMongoError:
                assert time.monotonic() < deadline, "the TLS server did not answer within 30 s"
                time.sleep(0.1)
    finally:
        probe.close()
    return TlsServer(port, password, proc)


@pytest.fixture
def tls_server(secantusd_binary: Path, tmp_path: Path, pki: Pki) -> Iterator[TlsServer]:
    server = _start(secantusd_binary, tmp_path, pki, mutual=False)
    yield server
    server.proc.terminate()
    server.proc.wait(30)


def _url(server: TlsServer, query: str) -> str:
    return f"mongo://{USER}:{server.password}@127.0.0.1:{server.port}/{DB}/jobs?{query}"


def test_fmin_over_tls_with_real_workers_and_the_url_a_cluster_publishes(
    tls_server, pki, workers, tmp_path
) -> None:
    info = ClusterInfo(
        server_host="127.0.0.1",
        server_port=tls_server.port,
        dbname=DB,
        username=USER,
        password_file=None,
        auth=True,
        service_manager="supervisor",
        tls=True,
        ca_file=str(pki.ca),
    )
    # the published URL names the options; with the password (read from a file in real clusters)
    url = _url(tls_server, info.tls_query())
    assert url.endswith(f"/jobs?tls=true&tlsCAFile={pki.ca}")
    config = write_config(tmp_path / "worker.conf", MONGO_URL=url, POLL_INTERVAL="0.05")
    for i in ("1", "2"):
        workers.start(config, i)
    trials = run_fmin(url, "tls", objectives.quadratic, n=10, max_queue_len=2)
    assert sum(r["status"] == "ok" for r in trials.results) == 10
    assert all(doc.get("owner") for doc in trials.trials)  # each reserved and run by a worker
    # the control side's own clients (status, report, attach) use the same options
    pymongo_uri = info.pymongo_uri().replace(f"{USER}@", f"{USER}:{tls_server.password}@")
    with pymongo.MongoClient(pymongo_uri, serverSelectionTimeoutMS=5000) as client:
        assert client[DB].jobs.count_documents({"exp_key": "tls"}) == 10


def test_plaintext_and_a_client_trusting_another_ca_are_refused(tls_server, pki) -> None:
    plain = pymongo.MongoClient(
        "127.0.0.1", tls_server.port, directConnection=True, serverSelectionTimeoutMS=1500
    )
    with pytest.raises(PyMongoError):
        plain.admin.command("ping")
    plain.close()
    with pytest.raises(ServerSelectionTimeoutError, match=r"(?i)certificate"):
        MongoTrials(_url(tls_server, f"tls=true&tlsCAFile={pki.other_ca}&serverSelectionTimeoutMS=1500"))


def test_a_misspelt_tls_option_is_refused_instead_of_connecting_in_clear(tls_server, pki) -> None:
    with pytest.raises(ValueError, match="tlsCaFile"):
        MongoTrials(_url(tls_server, f"tls=true&tlsCaFile={pki.ca}"))


def test_mutual_tls_needs_the_client_certificate(secantusd_binary: Path, tmp_path: Path, pki: Pki) -> None:
    server = _start(secantusd_binary, tmp_path, pki, mutual=True)
    try:
        with pytest.raises(PyMongoError):
            MongoTrials(_url(server, f"tls=true&tlsCAFile={pki.ca}&serverSelectionTimeoutMS=1500"))
        trials = MongoTrials(
            _url(server, f"tls=true&tlsCAFile={pki.ca}&tlsCertificateKeyFile={pki.client_pem}")
        )
        assert trials.count_by_state_unsynced(0) == 0  # connected, authenticated, queried
    finally:
        server.proc.terminate()
        server.proc.wait(30)
