"""Supervision where PID 1 is not systemd: the local cluster's server and workers are programs of one
supervisord (roles/hyperopt_supervisor), which restarts them by itself - no Ansible run in between.

One cluster (inventories/local in a private state dir, 2 workers) serves every test of this module,
in file order; each test leaves it running as it found it. Only pids read from that cluster's
supervisord are ever signalled; teardown stops it with stop.yml and kills what is left by pid.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pymongo
import pytest
from local_cluster import LocalInventory, free_port, make_local_inventory, wait_gone
from pymongo.write_concern import WriteConcern

pytestmark = pytest.mark.integration

SERVER, W1, W2 = "hyperopt-mongodb", "hyperopt-worker-1", "hyperopt-worker-2"


@dataclass
class Cluster:
    inv: LocalInventory
    workdir: Path
    timings: dict[str, float]

    def site(self, *extra: str) -> int:
        """site.yml with 2 workers (or what extra says); returns the number of changed tasks."""
        proc = self.inv.playbook("site.yml", "-e", "hyperopt_worker_count=2", *extra)
        return int(re.search(r"^localhost\s*:.*\bchanged=(\d+)", proc.stdout, re.M).group(1))

    def client(self) -> pymongo.MongoClient:
        return self.inv.client()


def running(state: str, pid: int | None) -> bool:
    return state == "RUNNING" and pid is not None


def wait_log(path: Path, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert text in path.read_text(), path.read_text()[-2000:]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # a state dir too deep for supervisord's socket (it binds "<socket>.<pid>", 107 bytes at most): the
    # socket goes to a short directory of its own in /tmp, the rest stays in the supervisor dir
    tmp = tmp_path_factory.mktemp("supervision") / ("a-state-dir-deeper-than-a-unix-socket-address-" * 2)
    tmp.mkdir()
    workdir = tmp / "workdir"
    inv = make_local_inventory(tmp, hyperopt_mongodb_port=free_port(), hyperopt_worker_workdir=str(workdir))
    c = Cluster(inv, workdir, {})
    try:
        c.site()
        yield c
    finally:
        inv.playbook("stop.yml", check=False)
        inv.kill_leftovers()
        print("\nsupervision timings: " + ", ".join(f"{k} {v:.2f} s" for k, v in c.timings.items()))


def test_one_supervisord_runs_the_server_and_both_workers(cluster: Cluster) -> None:
    for program in (SERVER, W1, W2):  # a program counts as RUNNING after its startsecs
        cluster.inv.supervisor.wait_for(program, running, timeout=60)
    status = cluster.inv.supervisor.status()
    assert sorted(status) == [SERVER, W1, W2]
    assert all(running(*s) for s in status.values()), status
    assert cluster.inv.supervisor.supervisord_pid() is not None
    conf = (cluster.inv.supervisor.dir / "supervisord.conf").read_text()
    assert "[inet_http_server]" not in conf
    assert (cluster.inv.supervisor.dir.stat().st_mode & 0o777) == 0o700
    sock = cluster.inv.supervisor.sock
    assert len(str(cluster.inv.supervisor.dir / "supervisor.sock")) > 99
    assert sock.is_socket() and sock.parent.parent == Path("/tmp"), sock
    assert sock.parent.name.startswith(f"pyhoptcluster-{os.getuid()}-")
    assert sock.parent.stat().st_uid == os.getuid() and (sock.parent.stat().st_mode & 0o777) == 0o700
    assert (sock.stat().st_mode & 0o777) == 0o700
    password = (cluster.inv.state_dir / "mongodb.password").read_text().strip()
    for path in cluster.inv.supervisor.dir.rglob("*.conf"):
        assert password not in path.read_text(), path


def test_killed_worker_is_restarted_by_supervisord(cluster: Cluster) -> None:
    sup = cluster.inv.supervisor
    before = sup.pids()
    os.kill(before[W1], signal.SIGKILL)
    _, _, seconds = sup.wait_for(W1, lambda s, p: p not in (None, before[W1]))
    cluster.timings["kill -9 worker -> new pid"] = seconds
    _, pid, seconds = sup.wait_for(W1, lambda s, p: running(s, p) and p != before[W1])
    cluster.timings["kill -9 worker -> RUNNING"] = seconds
    assert sup.pids()[W2] == before[W2], "the other worker is left alone"
    assert sup.pids()[SERVER] == before[SERVER]
    log = cluster.inv.worker_state_dir / "worker-1.log"
    wait_log(log, f"worker[1] {pid} pyhoptcluster.worker.main: connected")


def test_killed_server_is_restarted_with_its_data(cluster: Cluster) -> None:
    sup = cluster.inv.supervisor
    # j: a write the server has fsynced (SecantusDB, like mongod, may lose an unjournaled write to kill -9)
    with cluster.client() as client:
        durable = client.hyperopt.get_collection("supervision", write_concern=WriteConcern(j=True))
        durable.insert_one({"kept": True})
    before = sup.pids()[SERVER]
    os.kill(before, signal.SIGKILL)
    _, _, seconds = sup.wait_for(SERVER, lambda s, p: p not in (None, before))
    cluster.timings["kill -9 server -> new pid"] = seconds
    start = time.monotonic()
    with cluster.client() as client:
        assert client.hyperopt.command("ping")["ok"] == 1
        assert client.hyperopt.supervision.count_documents({"kept": True}) == 1
    cluster.timings["new server pid -> ping answered"] = time.monotonic() - start


def test_worker_that_exits_0_is_not_restarted(cluster: Cluster) -> None:
    sup = cluster.inv.supervisor
    pid = sup.pids()[W2]
    os.kill(pid, signal.SIGTERM)  # the worker's own way out: it exits 0
    sup.wait_for(W2, lambda s, p: s == "EXITED")
    time.sleep(3)
    assert sup.status()[W2] == ("EXITED", None)
    assert wait_gone([pid], timeout=1) == []
    assert "exited: hyperopt-worker-2 (exit status 0; expected)" in (sup.dir / "supervisord.log").read_text()
    # Ansible starts it again
    assert cluster.site() > 0
    assert running(*sup.status()[W2])


def test_worker_crashing_at_start_hits_the_start_limit(cluster: Cluster) -> None:
    """A worker whose working directory vanished fails every start within startsecs: supervisord retries
    with a growing pause and gives up (FATAL) instead of restarting it forever."""
    sup = cluster.inv.supervisor
    pid = sup.pids()[W1]
    cluster.workdir.rmdir()
    start = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    sup.wait_for(W1, lambda s, p: s == "FATAL", timeout=120)
    cluster.timings["kill -9 with no workdir -> FATAL"] = time.monotonic() - start
    log = (sup.dir / "supervisord.log").read_text()
    assert "gave up: hyperopt-worker-1 entered FATAL state, too many start retries too quickly" in log
    spawns = log.count("spawned: 'hyperopt-worker-1'")
    time.sleep(3)
    assert sup.status()[W1] == ("FATAL", None)
    assert (sup.dir / "supervisord.log").read_text().count("spawned: 'hyperopt-worker-1'") == spawns
    assert running(*sup.status()[W2]), "the other worker runs on"
    # The next Ansible run recreates the directory and starts the worker again.
    assert cluster.site() > 0
    assert running(*sup.status()[W1])


def test_second_run_changes_nothing_and_restarts_nothing(cluster: Cluster) -> None:
    before = cluster.inv.supervisor.pids()
    assert cluster.site() == 0
    assert cluster.inv.supervisor.pids() == before


def test_scale_down_and_up_leave_the_other_instances_alone(cluster: Cluster) -> None:
    sup = cluster.inv.supervisor
    before = sup.pids()
    cluster.site("-e", "hyperopt_worker_count=1")
    after_down = sup.pids()
    assert sorted(after_down) == [SERVER, W1]
    assert after_down == {SERVER: before[SERVER], W1: before[W1]}
    assert wait_gone([before[W2]]) == []
    assert not (sup.dir / "programs" / f"{W2}.conf").exists()

    cluster.site()
    after_up = sup.pids()
    assert after_up[SERVER] == before[SERVER] and after_up[W1] == before[W1]
    assert after_up[W2] not in (None, before[W2])


def test_a_run_without_a_count_keeps_the_running_workers(cluster: Cluster) -> None:
    """`up`, `start()` and site.yml without a count leave a running cluster as it is (it used to scale
    a 2-worker cluster on one host down to 1)."""
    before = cluster.inv.pids()
    assert {SERVER, W1, W2} <= set(before)
    proc = cluster.inv.playbook("site.yml")
    assert int(re.search(r"^localhost\s*:.*\bchanged=(\d+)", proc.stdout, re.M).group(1)) == 0
    assert cluster.inv.pids() == before

    from pyhoptcluster import HyperoptCluster

    facade = HyperoptCluster(str(cluster.inv.path), progress=False)
    facade.start()
    assert facade.workers_per_host == {"localhost": [1, 2]}
    assert cluster.inv.pids() == before


def test_cli_scale_adds_a_worker_and_scales_back_keeping_the_others(cluster: Cluster) -> None:
    import subprocess

    from local_cluster import BIN

    before = cluster.inv.pids()
    up = subprocess.run(
        [str(BIN / "pyhoptcluster"), "scale", "-q", "-i", str(cluster.inv.path), "3"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert up.returncode == 0, up.stderr
    assert "workers on localhost: 1, 2, 3" in up.stdout
    cluster.inv.supervisor.wait_for("hyperopt-worker-3", running, timeout=60)
    assert {k: v for k, v in cluster.inv.pids().items() if k != "hyperopt-worker-3"} == before
    down = subprocess.run(
        [str(BIN / "pyhoptcluster"), "scale", "-q", "-i", str(cluster.inv.path), "2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert down.returncode == 0, down.stderr
    assert cluster.inv.pids() == before


def test_stop_leaves_no_supervisord_and_no_program(cluster: Cluster) -> None:
    sup = cluster.inv.supervisor
    pids = [*sup.pids().values(), sup.supervisord_pid()]
    assert len(pids) == 4 and all(pids)
    cluster.inv.playbook("stop.yml")
    assert wait_gone(pids) == []
    assert sup.supervisord_pid() is None
    assert list((sup.dir / "programs").iterdir()) == []
    assert not sup.sock.parent.exists()  # the socket's own dir in /tmp is removed with supervisord
