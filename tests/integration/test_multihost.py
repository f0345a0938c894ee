"""HyperoptCluster over real hosts: the systemd-nspawn test bed (tests/hosts), driven from Python.

One module-scoped cluster walks through the life of a multi-host cluster in file order: cold start of
6 workers over 3 hosts, a warm start that changes nothing, a real 60-trial ``fmin`` through plain
``MongoTrials`` evaluated on every host, scale down and up (the remaining units keep their MainPID),
per-host caps and weights, the faults (unreachable host, wrong ssh key, no python3, no systemd) and
``cleanup()``. Then a second cluster whose server listens on 127.0.0.1 only, reached by the workers
through the ssh tunnels. Every server state dir is a tmp dir of its own; whatever a test leaves
running is stopped by pid file at teardown. Timings (cold/warm start, cleanup) are printed at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cloudpickle
import pytest
from local_cluster import Supervisor, run_fmin
from multihost_env import Multihost, alive_with, children, cmdline, multihost_env

from pyhoptcluster import HyperoptCluster
from pyhoptcluster.control.launchers import RoundRobinLauncher
from pyhoptcluster.errors import PlaybookError

pytestmark = [pytest.mark.integration, pytest.mark.multihost]

REPO = Path(__file__).resolve().parents[2]
# Ports of this module's servers. The auth bootstrap briefly runs the server on 127.0.0.1 with the
# same port, so stay away from 27017.. where other local servers (and test runs) live.
PORTS = list(range(27301, 27400))
UNREACHABLE = "{subnet}.99"  # an address on the test bed's bridge with no host behind it


# the collection's plugins import its module_utils as ansible_collections.pyhoptcluster.cluster.*
if str(REPO / "collections") not in sys.path:
    sys.path.insert(0, str(REPO / "collections"))
from ansible_collections.pyhoptcluster.cluster.plugins.filter.placement import round_robin  # noqa: E402


def objective(x: float) -> float:
    time.sleep(0.05)
    return (x - 1.5) ** 2


# The worker hosts cannot import this test module: pickle its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def mh(testbed_hosts, secantusd_binary, tmp_path_factory) -> Iterator[Multihost]:
    yield from multihost_env(testbed_hosts, secantusd_binary, tmp_path_factory.mktemp("multihost"), PORTS)


@dataclass
class Main:
    cluster: HyperoptCluster
    workers: RoundRobinLauncher
    inventory: Path


@pytest.fixture(scope="module")
def main(mh: Multihost) -> Main:
    inventory = mh.inventory("main")
    cluster, workers = mh.cluster(inventory, cleanup=True)
    return Main(cluster, workers, inventory)


def _timed(mh: Multihost, key: str, fn, *args, **kwargs):
    start = time.monotonic()
    try:
        return fn(*args, **kwargs)
    finally:
        mh.timings[key] = time.monotonic() - start


# -- start, warm start, fmin ---------------------------------------------------------------------------


def test_cleanup_on_fresh_hosts_is_a_quiet_no_op(mh, main):
    # nothing installed yet: no unit files, no server state (stop must not trip over the missing target)
    main.cluster.cleanup()
    for ip in mh.ips:
        assert {active for active, _, _ in mh.units(ip).values()} == {"inactive"}, ip


def test_cold_start_places_six_workers_round_robin_over_three_hosts(mh, main):
    _timed(mh, "cold start(6)", main.cluster.start, worker_count=6)
    h1, h2, h3 = mh.ips
    assert main.cluster.workers_per_host == {h1: [1, 4], h2: [2, 5], h3: [3, 6]}
    assert {ip: sorted(ids) for ip, ids in mh.running().items()} == {h1: [1, 4], h2: [2, 5], h3: [3, 6]}
    for ip in mh.ips:
        assert mh.units(ip)["hyperopt-workers.target"][:2] == ("active", "enabled")
    assert main.cluster.mongo_trial_url.split("@")[1].startswith(f"{mh.tb.bridge_ip}:")


def test_warm_start_changes_nothing_and_restarts_no_worker(mh, main):
    before = mh.running()
    _timed(mh, "warm start(6)", main.cluster.start, worker_count=6)
    assert mh.running() == before
    assert not any(main.workers.runs[-1].changed.get(ip) for ip in mh.ips), main.workers.runs[-1].changed


def test_fmin_of_60_trials_is_evaluated_on_every_host(mh, main):
    trials = run_fmin(main.cluster.mongo_trial_url, "multihost-60", 60, workers=6, objective=objective)
    docs = trials.trials
    assert len(docs) == 60
    assert all(d["result"]["status"] == "ok" and isinstance(d["result"]["loss"], float) for d in docs)
    owners = {str(d["owner"]).split(":")[0] for d in docs}
    assert owners == set(mh.hostnames.values()), owners


def test_status_and_logs_see_every_host_and_a_killed_worker(mh, main):
    h1, h2, h3 = mh.ips
    killed_pid = mh.running_on(h1)[4]
    killed_at = time.time()
    mh.ssh(h1, f"kill -9 {killed_pid}")  # a crash: systemd restarts the unit (Restart=on-failure)
    deadline = time.monotonic() + 60
    while mh.running_on(h1).get(4) in (None, killed_pid):
        assert time.monotonic() < deadline, "worker 4 on the first host was not restarted"
        time.sleep(0.5)
    deadline = time.monotonic() + 60
    while True:  # the new process has written its record (its first beat)
        status = _timed(mh, "status(6)", main.cluster.status)
        four = next(w for w in status.workers if (w.host, w.instance) == (h1, 4))
        if four.pid == mh.running_on(h1)[4] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert status.server.up
    assert sorted((w.host, w.instance) for w in status.workers) == sorted(
        [(h1, 1), (h1, 4), (h2, 2), (h2, 5), (h3, 3), (h3, 6)]
    )
    assert four.pid == mh.running_on(h1)[4] and four.restarts >= 1, four
    assert all(w.state in ("idle", "busy") for w in status.workers), status.workers
    assert {e.exp_key: e.trials for e in status.experiments}["multihost-60"] == {"done": 60}

    # one merged view of the journals of every host (systemd units there), tagged host and instance
    lines = _timed(mh, "logs(6)", main.cluster.logs, lines=100)
    tags = {(line.host, line.tag) for line in lines}
    assert {(h, f"worker[{i}]") for h, i in [(h1, 1), (h1, 4), (h2, 2), (h2, 5), (h3, 3), (h3, 6)]} <= tags
    assert {line.host for line in lines if line.source == "server"} == {"localhost"}  # the control node
    assert [line.time for line in lines] == sorted(line.time for line in lines)
    restarted = [
        line for line in lines if (line.host, line.instance) == (h1, 4) and "starting: owner" in line.text
    ]
    assert restarted and restarted[-1].time >= killed_at - 1, restarted
    only = main.cluster.logs(host=h3, instance=6, since=killed_at - 600)
    assert only and {(line.host, line.tag) for line in only} == {(h3, "worker[6]")}


# -- scaling ---------------------------------------------------------------------------------------


def test_scale_down_to_three_keeps_the_remaining_units_and_disables_the_surplus(mh, main):
    before = mh.running()
    main.cluster.start(worker_count=3)
    h1, h2, h3 = mh.ips
    assert main.cluster.workers_per_host == {h1: [1], h2: [2], h3: [3]}
    assert mh.running() == {h1: {1: before[h1][1]}, h2: {2: before[h2][2]}, h3: {3: before[h3][3]}}
    for ip, surplus in ((h1, 4), (h2, 5), (h3, 6)):
        active, enabled, _ = mh.units(ip)[f"hyperopt-worker@{surplus}.service"]
        assert (active, enabled) == ("inactive", "disabled")


def test_scale_up_to_five_adds_workers_and_keeps_the_running_ones(mh, main):
    before = mh.running()
    main.cluster.start(worker_count=5)
    h1, h2, h3 = mh.ips
    assert main.cluster.workers_per_host == {h1: [1, 4], h2: [2, 5], h3: [3]}
    after = mh.running()
    assert sorted(after[h1]) == [1, 4] and sorted(after[h2]) == [2, 5] and sorted(after[h3]) == [3]
    assert {ip: {i: pid for i, pid in after[ip].items() if i <= 3} for ip in mh.ips} == before


# -- per-host caps and weights --------------------------------------------------------------------------


def test_per_host_caps_and_weights_shape_the_placement(mh):
    h1, _, h3 = mh.ips
    inventory = mh.inventory(
        "caps", host_vars={h1: {"hyperopt_worker_max": 1}, h3: {"hyperopt_worker_weight": 2}}
    )
    cluster, _ = mh.cluster(inventory)
    cluster.start(worker_count=6)
    expected = round_robin(mh.ips, 6, caps={h1: 1}, weights={h3: 2})
    assert [len(expected[ip]) for ip in mh.ips] == [1, 2, 3]
    assert cluster.workers_per_host == expected
    assert {ip: sorted(ids) for ip, ids in mh.running().items()} == expected


def test_more_workers_than_the_caps_allow_raise_value_error_before_anything_changes(mh):
    h1, h2, h3 = mh.ips
    caps = {h1: {"hyperopt_worker_max": 1}, h2: {"hyperopt_worker_max": 1}, h3: {"hyperopt_worker_max": 2}}
    cluster, _ = mh.cluster(mh.inventory("too-many", host_vars=caps))
    before = mh.running()
    with pytest.raises(ValueError, match=r"5 workers do not fit") as err:
        cluster.start(worker_count=5)
    assert f"{h1}=1, {h2}=1, {h3}=2" in str(err.value) and "at most 4" in str(err.value)
    assert mh.running() == before


# -- faults: the failing host is named, the others keep their workers -----------------------------------


@pytest.fixture
def three_running(mh, main) -> dict[str, dict[int, int]]:
    """Back to the plain inventory with one worker per host; returns what runs."""
    main.cluster.start(worker_count=3)
    running = mh.running()
    assert {ip: sorted(ids) for ip, ids in running.items()} == dict(zip(mh.ips, [[1], [2], [3]], strict=True))
    return running


def test_unreachable_host_is_named_and_the_other_hosts_keep_their_workers(mh, three_running):
    dead = UNREACHABLE.format(subnet=mh.tb.subnet)
    cluster, _ = mh.cluster(mh.inventory("unreachable", host_vars={dead: {}}))
    with pytest.raises(PlaybookError) as err:
        cluster.start(worker_count=4)
    message = str(err.value)
    assert f"{dead} unreachable" in message and f"Unreachable: {dead}" in message, message
    h1, h2, h3 = mh.ips
    assert f"Cluster state: {h1} runs workers 1; {h2} runs workers 2; {h3} runs workers 3" in message
    assert mh.running() == three_running


def test_wrong_ssh_key_is_named_and_the_other_hosts_keep_their_workers(mh, three_running):
    h1, h2, h3 = mh.ips
    wrong_key = mh.tmp / "wrong_id_ed25519"
    if not wrong_key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong_key)], check=True)
    bad = {
        "ansible_ssh_private_key_file": str(wrong_key),
        # no ControlPersist: a connection kept open from an earlier run (made with the right key)
        # would otherwise be reused, and the wrong key never tried
        "ansible_ssh_args": "-o ControlMaster=no -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
    }
    cluster, _ = mh.cluster(mh.inventory("wrong-key", host_vars={h3: bad}))
    with pytest.raises(PlaybookError) as err:
        cluster.start(worker_count=3)
    message = str(err.value)
    assert f"{h3} unreachable" in message and "Permission denied" in message, message
    assert f"{h1} runs workers 1; {h2} runs workers 2" in message
    assert mh.running() == three_running


def test_host_without_python3_is_named_with_what_is_missing(mh, three_running):
    h1, h2, h3 = mh.ips
    cluster, _ = mh.cluster(mh.inventory("no-python"))
    with mh.hidden(h3, "/usr/bin/python3"), pytest.raises(PlaybookError) as err:
        cluster.start(worker_count=3)
    message = str(err.value)
    assert f"{h3} cannot run hyperopt workers: no Python at /usr/bin/python3" in message, message
    assert "apt-get install python3" in message
    assert f"{h1} runs workers 1; {h2} runs workers 2" in message
    assert mh.running() == three_running


def test_host_without_systemd_is_named_when_systemd_is_required(mh, three_running):
    h3 = mh.ips[2]
    cluster, _ = mh.cluster(mh.inventory("no-systemd", hyperopt_worker_service_manager="systemd"))
    # sd_booted() and the role's probe look for /run/systemd/system; hide it for the duration
    with mh.hidden(h3, "/run/systemd/system"), pytest.raises(PlaybookError) as err:
        cluster.start(worker_count=3)
    message = str(err.value)
    assert f"{h3} cannot run hyperopt workers: systemd is not PID 1 there" in message, message
    assert mh.running() == three_running


# -- cleanup -----------------------------------------------------------------------------------------


def test_cleanup_stops_every_unit_on_every_host_and_the_server(mh, main):
    main.cluster.start(worker_count=6)
    server_pid = Supervisor(mh.tmp / "server-main" / "supervisor").pids()["hyperopt-mongodb"]
    _timed(mh, "cleanup(6)", main.cluster.cleanup)
    for ip in mh.ips:
        for unit, (active, enabled, _) in mh.units(ip).items():
            assert active == "inactive", (ip, unit)
            if unit.endswith(".target") or int(unit.split("@")[1].split(".")[0]) <= 6:
                assert enabled == "disabled", (ip, unit)
        assert mh.ssh(ip, "systemctl is-active hyperopt-workers.target || true").strip() == "inactive"
    assert not alive_with(server_pid, str(mh.tmp / "server-main"))


# -- the ssh tunnel --------------------------------------------------------------------------------


def test_ssh_tunnels_reach_a_server_bound_to_loopback_only(mh):
    inventory = mh.inventory(
        "tunnel",
        server="tunnel",
        hyperopt_mongodb_bind_addresses=["127.0.0.1"],
        hyperopt_worker_ssh_tunnel=True,
    )
    cluster, _ = mh.cluster(inventory, cleanup=True)
    tunnels = mh.tmp / "server-tunnel" / "tunnels"
    pids: dict[str, int] = {}
    try:
        cluster.start(worker_count=3)
        port = cluster.master_port
        assert cluster.mongo_trial_url.split("@")[1].startswith(f"127.0.0.1:{port}/")
        # the hosts cannot reach the server: it listens on the control node's loopback only
        probe = f"python3 -c 'import socket; socket.create_connection((\"{mh.tb.bridge_ip}\", {port}), 3)'"
        assert mh.tb.ssh(mh.ips[0], probe).returncode != 0
        # one tunnel per host: a keeper (pid file) running ssh, no secret on either command line
        password = Path(cluster.info.password_file).read_text().strip()
        pids = {ip: int((tunnels / f"tunnel-{ip}.pid").read_text()) for ip in mh.ips}
        ssh_pids = {}
        for ip, pid in pids.items():
            argv = cmdline(pid)
            assert argv[1].endswith("ssh_tunnel_keeper.py") and password not in " ".join(argv)
            (ssh_pid,) = children(pid)
            ssh_pids[ip] = ssh_pid
            assert cmdline(ssh_pid) == argv[argv.index("--") + 1 :]
            assert cmdline(ssh_pid)[0] == "ssh" and f"root@{ip}" in cmdline(ssh_pid)
            assert f"127.0.0.1:{port}:127.0.0.1:{port}" in cmdline(ssh_pid)
            conf = mh.ssh(ip, "cat /var/lib/pyhoptcluster-worker/worker.conf")
            assert f"@127.0.0.1:{port}/hyperopt/jobs" in conf
        trials = run_fmin(cluster.mongo_trial_url, "multihost-tunnel", 18, workers=3, objective=objective)
        assert len(trials.trials) == 18 and all(d["result"]["status"] == "ok" for d in trials.trials)
        assert {str(d["owner"]).split(":")[0] for d in trials.trials} == set(mh.hostnames.values())
        # a tunnel whose ssh dies (connection lost) comes back by itself, and its host works again
        h1 = mh.ips[0]
        os.kill(ssh_pids[h1], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while [c for c in children(pids[h1]) if c != ssh_pids[h1]] == []:
            assert time.monotonic() < deadline, (tunnels / f"tunnel-{h1}.log").read_text()[-2000:]
            time.sleep(0.2)
        assert "starting it again" in (tunnels / f"tunnel-{h1}.log").read_text()
        on_h1 = f"python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), 3)'"
        while mh.tb.ssh(h1, on_h1).returncode != 0:  # the new ssh's listener on the host
            assert time.monotonic() < deadline, (tunnels / f"tunnel-{h1}.log").read_text()[-2000:]
            time.sleep(0.2)
        # the host's worker takes part again (it retries the server with a backoff of a few seconds)
        again = run_fmin(cluster.mongo_trial_url, "multihost-tunnel-2", 30, workers=3, objective=objective)
        assert len(again.trials) == 30 and all(d["result"]["status"] == "ok" for d in again.trials)
        assert mh.hostnames[h1] in {str(d["owner"]).split(":")[0] for d in again.trials}
        # a second start leaves the tunnels alone
        cluster.start(worker_count=3)
        assert {ip: int((tunnels / f"tunnel-{ip}.pid").read_text()) for ip in mh.ips} == pids
    finally:
        cluster.cleanup()
    assert not any(alive_with(pid, "ssh -N") for pid in pids.values())
    assert not list(tunnels.glob("tunnel-*.pid"))
    for ip in mh.ips:
        assert {active for active, _, _ in mh.units(ip).values()} == {"inactive"}, ip


def test_timings_are_recorded(mh):
    # not a timed assert (DESIGN: benchmarks print, tests do not assert durations); printed at teardown
    assert {"cold start(6)", "warm start(6)", "cleanup(6)"} <= set(mh.timings)
    (mh.tmp / "timings.json").write_text(json.dumps(mh.timings))
