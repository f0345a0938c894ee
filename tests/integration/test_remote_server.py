"""The cluster's server on another inventory host: SecantusDB on test host 1, workers on hosts 2 and 3.

One module-scoped cluster, in file order: check mode on fresh hosts changes nothing and does not fail;
a cold start installs the server on host 1 from a control-node wheelhouse (the test hosts have no
package index), binds it to host 1's own address and returns the password to the control node as a
0600 copy; a real ``fmin`` through plain ``MongoTrials`` from the control node; a second start changes
nothing; a fresh ``HyperoptCluster`` attaches (status, logs); ``cleanup()`` stops the server there.
The server state dir lives on host 1, the control node's copy of the password and the wheelhouse under
pytest's tmp path; whatever a failed test leaves running goes with the test bed at the session's end.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cloudpickle
import pymongo.errors
import pytest
import yaml
from hyperopt import JOB_STATE_DONE
from hyperopt.mongoexp import MongoTrials
from local_cluster import all_cmdlines, port_is_free, run_fmin
from multihost_env import Multihost, multihost_env

from pyhoptcluster import HyperoptCluster

pytestmark = [pytest.mark.integration, pytest.mark.multihost]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# This module's server ports (the auth bootstrap briefly uses the same port on the host's 127.0.0.1).
PORTS = list(range(27400, 27420))
# The server's state dir on host 1 (the test hosts are fresh per session).
SERVER_STATE = "/var/lib/pyhoptcluster-remote"
UNIT = "hyperopt-mongodb.service"


def objective(x: float) -> float:
    time.sleep(0.05)
    return (x - 1.5) ** 2


# The worker hosts cannot import this test module: pickle its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def mh(testbed_hosts, secantusd_binary, tmp_path_factory) -> Iterator[Multihost]:
    yield from multihost_env(
        testbed_hosts, secantusd_binary, tmp_path_factory.mktemp("remote-server"), PORTS, "remote server"
    )


@dataclass
class Remote:
    mh: Multihost
    inventory: Path
    server: str  # test host 1's address: the hyperopt_master host
    workers: list[str]  # the other test hosts
    controller_dir: Path  # hyperopt_mongodb_controller_state_dir

    @property
    def password_copy(self) -> Path:
        return self.controller_dir / "mongodb.password"

    def unit(self) -> tuple[str, int]:
        """(ActiveState, MainPID) of the server's unit on the server host."""
        out = self.mh.ssh(self.server, f"systemctl show -p ActiveState -p MainPID {UNIT}")
        props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        return props["ActiveState"], int(props["MainPID"] or 0)

    def server_cmdline(self, pid: int) -> str:
        return self.mh.ssh(self.server, f"tr '\\0' ' ' < /proc/{pid}/cmdline")

    def sha256_on_server(self, path: str) -> str:
        return self.mh.ssh(self.server, f"sha256sum {path}").split()[0]

    def playbook(self, name: str, *extra: str) -> subprocess.CompletedProcess[str]:
        """``ansible-playbook playbooks/<name> -i <inventory>`` from the repo root, as ops run it."""
        cmd = [str(BIN / "ansible-playbook"), f"playbooks/{name}", "-i", str(self.inventory), *extra]
        env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, (
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
        return proc


def remote_server_inventory(mh: Multihost, name: str, server: str, workers: list[str], **all_vars) -> Path:
    """The test bed's inventory (Multihost.inventory) with ``server`` as the only hyperopt_master host,
    reached by ssh like the workers, and ``workers`` as the worker hosts."""
    path = mh.inventory(name, **all_vars)
    inv = yaml.safe_load(path.read_text())
    children = inv["all"]["children"]
    hosts = children["hyperopt_workers"]["hosts"]
    ssh_vars = copy.deepcopy(children["hyperopt_workers"].get("vars") or {})
    children["hyperopt_master"] = {"hosts": {server: dict(hosts[server] or {})}, "vars": ssh_vars}
    children["hyperopt_workers"]["hosts"] = {ip: hosts[ip] for ip in workers}
    path.write_text(yaml.safe_dump(inv, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def remote(mh: Multihost) -> Remote:
    server, *workers = mh.ips
    controller_dir = mh.tmp / "controller" / server
    inventory = remote_server_inventory(
        mh,
        "remote",
        server,
        workers,
        hyperopt_mongodb_state_dir=SERVER_STATE,
        hyperopt_mongodb_pip_venv=f"{SERVER_STATE}/secantusdb-venv",
        hyperopt_mongodb_wheelhouse=str(mh.tmp / "secantusdb-wheelhouse"),
        hyperopt_mongodb_controller_state_dir=str(controller_dir),
        hyperopt_mongodb_bind_addresses=[],  # automatic: host 1's own address
    )
    return Remote(mh, inventory, server, workers, controller_dir)


@dataclass
class Started:
    cluster: HyperoptCluster
    workers: object  # RoundRobinLauncher: its runs[-1].changed counts the changed tasks per host


@pytest.fixture(scope="module")
def started(remote: Remote) -> Started:
    cluster, workers = remote.mh.cluster(remote.inventory, cleanup=True)
    cluster.start(worker_count=4)
    return Started(cluster, workers)


def processes_with(needle: str) -> dict[int, str]:
    """pid -> pid namespace of the processes in this machine's /proc whose command line has ``needle``."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit():
                continue
            if needle in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                found[int(proc.name)] = os.readlink(proc / "ns" / "pid")
        except OSError:
            continue
    return found


def recap(stdout: str) -> dict[str, int]:
    """host -> changed=N of the PLAY RECAP."""
    tail = stdout.rsplit("PLAY RECAP", 1)[-1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\S+)\s*:.*?changed=(\d+)", tail, re.M)}


def test_check_mode_on_fresh_hosts_does_not_fail_and_changes_nothing(remote):
    remote.playbook("master.yml", "--check")
    assert remote.mh.ssh(remote.server, f"test -e {SERVER_STATE} && echo yes || echo no").strip() == "no"
    assert not remote.controller_dir.exists()


def test_server_runs_on_the_first_host_and_not_on_the_control_node(remote, started):
    active, pid = remote.unit()
    assert active == "active"
    assert f"{SERVER_STATE}/secantusd.toml" in remote.server_cmdline(pid)
    # The control node's /proc also lists the test hosts' processes (nspawn's own pid namespaces): the
    # server is only there, none runs in the control node's namespace, nothing listens on its port here.
    servers = processes_with(f"{SERVER_STATE}/secantusd.toml")
    assert servers and all(ns != os.readlink("/proc/self/ns/pid") for ns in servers.values()), servers
    assert port_is_free(started.cluster.master_port, "0.0.0.0")
    # bound to host 1's own address (the automatic rule), which the workers and the driver connect to
    assert started.cluster.info.server_host == remote.server
    assert started.cluster.mongo_trial_url.split("@")[1].startswith(f"{remote.server}:")
    assert started.cluster.master_port in PORTS
    assert started.cluster.workers_per_host == {remote.workers[0]: [1, 3], remote.workers[1]: [2, 4]}


def test_password_comes_back_as_a_private_copy_on_the_control_node(remote, started):
    info = started.cluster.info
    assert Path(info.password_file) == remote.password_copy
    assert remote.password_copy.stat().st_mode & 0o777 == 0o600
    assert remote.controller_dir.stat().st_mode & 0o777 == 0o700
    digest = hashlib.sha256(remote.password_copy.read_bytes()).hexdigest()
    assert digest == remote.sha256_on_server(f"{SERVER_STATE}/mongodb.password")
    # only the copy and the cluster's CA (TLS is on: the server is on another host) live on the control
    # node: no server state there
    assert sorted(p.name for p in remote.controller_dir.iterdir()) == ["mongodb.password", "pki"]
    assert (remote.controller_dir / "pki").stat().st_mode & 0o777 == 0o700
    # never in the playbook output of the cold start, nor on a command line on either side
    password = remote.password_copy.read_text().strip()
    assert len(password) == 32
    assert started.workers.runs[0].output and password not in started.workers.runs[0].output
    assert password not in remote.mh.ssh(remote.server, "ps -eo args")
    assert password not in all_cmdlines()


def test_fmin_from_the_control_node_is_evaluated_on_both_worker_hosts(remote, started):
    trials = run_fmin(started.cluster.mongo_trial_url, "remote-40", 40, workers=4, objective=objective)
    docs = trials.trials
    assert len(docs) == 40
    assert all(d["result"]["status"] == "ok" and isinstance(d["result"]["loss"], float) for d in docs)
    owners = {str(d["owner"]).split(":")[0] for d in docs}
    assert owners == {remote.mh.hostnames[ip] for ip in remote.workers}, owners


def test_second_start_changes_nothing(remote, started):
    _, pid = remote.unit()
    copy_mtime = remote.password_copy.stat().st_mtime_ns
    started.cluster.start(worker_count=4)
    run = started.workers.runs[-1]
    assert {host: n for host, n in run.changed.items() if n} == {}, run.changed
    assert remote.unit() == ("active", pid)
    assert remote.password_copy.stat().st_mtime_ns == copy_mtime


def test_a_fresh_cluster_object_attaches_to_the_remote_server(remote, started):
    fresh = HyperoptCluster(str(remote.inventory))
    assert fresh.mongo_trial_url == started.cluster.mongo_trial_url
    status = fresh.status()
    assert status.server.up
    assert sorted((w.host, w.instance) for w in status.workers) == sorted(
        [(remote.workers[0], 1), (remote.workers[0], 3), (remote.workers[1], 2), (remote.workers[1], 4)]
    )
    lines = fresh.logs(host=remote.server)
    assert lines and {line.host for line in lines} == {remote.server}, lines[:3]


def test_a_new_control_node_copy_is_fetched_again_by_info(remote, started):
    # a lost copy (another control node, a wiped home): the read-only info.yml fetches it again
    digest = hashlib.sha256(remote.password_copy.read_bytes()).hexdigest()
    remote.password_copy.unlink()
    remote.playbook("info.yml")
    assert remote.password_copy.stat().st_mode & 0o777 == 0o600
    assert hashlib.sha256(remote.password_copy.read_bytes()).hexdigest() == digest


def test_check_mode_on_the_running_cluster_does_not_fail(remote, started):
    _, pid = remote.unit()
    proc = remote.playbook("site.yml", "--check")
    assert {host: n for host, n in recap(proc.stdout).items() if n} == {}, proc.stdout
    assert remote.unit() == ("active", pid)


def test_rotation_reaches_the_server_host_the_copy_and_the_workers(remote, started):
    old = remote.password_copy.read_text().strip()
    old_url = started.cluster.mongo_trial_url
    _, pid = remote.unit()
    old_workers = {(w.host, w.instance): w.pid for w in started.cluster.status().workers}
    assert len(old_workers) == 4 and all(old_workers.values()), old_workers
    started.cluster.rotate_password()
    new = remote.password_copy.read_text().strip()
    assert new != old and len(new) == 32
    assert remote.password_copy.stat().st_mode & 0o777 == 0o600
    digest = hashlib.sha256(remote.password_copy.read_bytes()).hexdigest()
    assert digest == remote.sha256_on_server(f"{SERVER_STATE}/mongodb.password")
    assert remote.unit()[0] == "active" and remote.unit()[1] != pid  # the server restarted with it
    output = started.workers.runs[-1].output
    assert output and old not in output and new not in output
    # the four workers on the two systemd hosts restarted with it, and each new process's job loop
    # connected (its heartbeat connects on its own, so "idle" alone does not say that)
    deadline = time.monotonic() + 90
    while True:
        now = {(w.host, w.instance): (w.state, w.pid) for w in started.cluster.status().workers}
        connected = {
            (line.host, line.instance)
            for line in started.cluster.logs(lines=40)
            if "connected to" in line.text
            and now.get((line.host, line.instance), ("", None))[1] is not None
            and f" {now[(line.host, line.instance)][1]} " in line.text
        }
        if all(now.get(k, ("", p))[1] != p and k in connected for k, p in old_workers.items()):
            break
        assert time.monotonic() < deadline, (old_workers, now, connected)
        time.sleep(1)
    # a fmin is evaluated on both hosts
    trials = run_fmin(started.cluster.mongo_trial_url, "remote-rotated", 40, workers=4, objective=objective)
    assert len(trials.trials) == 40 and all(d["result"]["status"] == "ok" for d in trials.trials)
    owners = {str(d["owner"]).split(":")[0] for d in trials.trials}
    if owners != {remote.mh.hostnames[ip] for ip in remote.workers}:
        status = started.cluster.status().workers
        lines = [f"{x.host} {x.instance} {x.text}" for x in started.cluster.logs(lines=15) if x.instance]
        raise AssertionError(f"{owners}\n{status}\n" + "\n".join(lines))
    # and the old password is refused
    with pytest.raises(pymongo.errors.OperationFailure, match=r"(?i)auth"):
        MongoTrials(old_url, exp_key="remote-rotated").count_by_state_unsynced(JOB_STATE_DONE)


def test_cleanup_stops_the_server_on_its_host(remote, started):
    started.cluster.cleanup()
    assert remote.unit()[0] == "inactive"
    for ip in remote.workers:
        assert remote.mh.running_on(ip) == {}, ip
    # data, password and the control node's copy are kept, so start() brings the same cluster back
    assert remote.password_copy.is_file()
    assert (
        remote.mh.ssh(remote.server, f"test -f {SERVER_STATE}/mongodb.password && echo yes").strip() == "yes"
    )
