"""TLS on the multi-host test bed (issue 9): with ``hyperopt_mongodb_tls: auto`` a cluster whose workers
are on other hosts speaks TLS. The server on the control node gets a certificate for its address on
the test hosts' bridge; every worker host gets the CA; a real fmin from the control node is evaluated
on every host over TLS; a plaintext client and a client trusting another CA are refused, from the
control node and from a test host.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Iterator

import cloudpickle
import pymongo
import pytest
from hyperopt.mongoexp import MongoTrials
from local_cluster import run_fmin
from multihost_env import Multihost, multihost_env
from pki import make_ca
from pymongo.errors import PyMongoError, ServerSelectionTimeoutError

pytestmark = [pytest.mark.integration, pytest.mark.multihost]

PORTS = list(range(27440, 27460))


def objective(x: float) -> float:
    time.sleep(0.05)
    return (x + 0.5) ** 2


cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def mh(testbed_hosts, secantusd_binary, tmp_path_factory) -> Iterator[Multihost]:
    yield from multihost_env(testbed_hosts, secantusd_binary, tmp_path_factory.mktemp("tls-mh"), PORTS, "tls")


def test_auto_tls_cluster_over_three_hosts_runs_fmin_and_refuses_plaintext(mh: Multihost) -> None:
    tls_dir = mh.tmp / "tls"
    inventory = mh.inventory(
        "tls", server="tls", hyperopt_mongodb_tls="auto", hyperopt_mongodb_tls_dir=str(tls_dir)
    )
    cluster, _ = mh.cluster(inventory, cleanup=True)
    cluster.start(worker_count=3)
    url = cluster.mongo_trial_url
    ca = tls_dir / "ca.pem"
    bridge = mh.tb.bridge_ip
    assert url.split("@")[1].startswith(f"{bridge}:"), url.split("@")[1]
    assert url.endswith(f"/hyperopt/jobs?tls=true&tlsCAFile={ca}")

    trials = run_fmin(url, "tls-multihost", 24, workers=3, objective=objective)
    assert sum(r["status"] == "ok" for r in trials.results) == 24
    owners = {str(d["owner"]).split(":")[0] for d in trials.trials}
    assert owners == set(mh.hostnames.values()), owners

    port = cluster.master_port
    plain = pymongo.MongoClient(bridge, port, directConnection=True, serverSelectionTimeoutMS=1500)
    with pytest.raises(PyMongoError):
        plain.admin.command("ping")
    plain.close()
    # a client that trusts any other CA is refused
    other = mh.tmp / "other-ca.pem"
    make_ca(other, "another cluster's CA")
    with pytest.raises(ServerSelectionTimeoutError, match=r"(?i)certificate"):
        MongoTrials(url.replace(str(ca), str(other)) + "&serverSelectionTimeoutMS=1500")

    # from a worker host: the CA the role put there verifies the server; plaintext gets nothing
    host = mh.ips[0]
    check = (
        "import sys, pymongo\n"
        "def ping(**kw):\n"
        f"    c = pymongo.MongoClient({bridge!r}, {port}, directConnection=True,\n"
        "                            serverSelectionTimeoutMS=3000, **kw)\n"
        "    try:\n"
        "        return c.admin.command('ping')['ok']\n"
        "    except Exception as exc:\n"
        "        return type(exc).__name__\n"
        "    finally:\n"
        "        c.close()\n"
        "print(ping(tls=True, tlsCAFile='/var/lib/pyhoptcluster-worker/server-ca.pem'), ping())\n"
    )
    out = mh.ssh(host, f"/opt/pyhoptcluster/worker-venv/bin/python -c {shlex.quote(check)}").split()
    assert out[0] == "1.0", out
    assert out[1] != "1.0", out

    # least privilege on a real host: the workers run as the unprivileged hyperopt-worker user, their
    # config (which holds the password) is 0600 and theirs, the CA is public
    lines = mh.ssh(host, "ps -e -o user:32=,args= | grep '[p]yhoptcluster-worker' || true").splitlines()
    assert {line.split()[0] for line in lines if line.strip()} == {"hyperopt-worker"}, lines
    modes = mh.ssh(
        host,
        "stat -c '%a %U %n' /var/lib/pyhoptcluster-worker/worker.conf "
        "/var/lib/pyhoptcluster-worker/server-ca.pem",
    ).splitlines()
    assert modes[0].startswith("600 hyperopt-worker "), modes
    assert modes[1].startswith("644 "), modes
