"""Operations on a real local cluster of two "hosts" (both on this machine, each with its own worker
venv and state dir): worker packages from Python, GPU pinning per instance, ``check`` (a missing
package, a real version difference), fmin's all-failed error, ``experiments``/``delete`` and ``logs``
(merged, tagged, filtered, followed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import pexpect
import pymongo
import pytest
import yaml
from hyperopt import STATUS_OK, fmin, hp, rand
from hyperopt.mongoexp import MongoTrials
from local_cluster import BIN, LocalInventory, Supervisor, free_port, make_local_inventory

from pyhoptcluster import HyperoptCluster, TrialsFailedError
from pyhoptcluster.control.check import WorkerCheckWarning
from pyhoptcluster.control.status import read_status

pytestmark = pytest.mark.integration

cloudpickle.register_pickle_by_value(sys.modules[__name__])

# placement of 3 workers on [localhost, node2]: 1 and 3 on localhost (GPUs 0,1), 2 on node2 (GPU 5)
EXPECTED_GPU = {1: "0", 2: "5", 3: "1"}
MISSING = "pyhoptcluster_surely_not_installed"


def gpu_and_six(x: float) -> dict:
    import os
    import time

    import six  # installed on the workers by worker_packages, not on the driver's side of this test

    time.sleep(0.3)
    return {
        "loss": x * x,
        "status": STATUS_OK,
        "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "six": six.__version__,
    }


def needs_missing_package(x: float) -> float:
    import pyhoptcluster_surely_not_installed  # noqa: F401

    return x


def fails_below_zero(x: float) -> float:
    if x < 0:
        raise ValueError(f"negative x={x}")
    return x


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalInventory, HyperoptCluster]]:
    tmp = tmp_path_factory.mktemp("ops")
    inv = make_local_inventory(
        tmp, hyperopt_mongodb_port=free_port(), hyperopt_worker_venv=str(tmp / "venv-localhost")
    )
    hosts = yaml.safe_load((inv.path / "hosts.yml").read_text())
    hosts["all"]["children"]["hyperopt_workers"]["hosts"] = {
        "localhost": {"hyperopt_worker_gpus": 2},
        "node2": {
            "hyperopt_worker_gpus": [5],
            "hyperopt_worker_venv": str(tmp / "venv-node2"),
            "hyperopt_worker_state_dir": str(inv.worker_state_dir / "node2"),
            # a supervisord of its own, as on a machine of its own (one shared by two inventory hosts
            # would see the other host's programs as its own surplus on the next run)
            "hyperopt_supervisor_dir": str(tmp / "supervisor-node2"),
        },
    }
    (inv.path / "hosts.yml").write_text(yaml.safe_dump(hosts))
    cluster = HyperoptCluster(str(inv.path), worker_packages=["six==1.17.0"])
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cluster.start(worker_count=3)
        assert not [w for w in caught if issubclass(w.category, WorkerCheckWarning)], [
            str(w.message) for w in caught
        ]
        # the run installed both runtimes, so it reported them
        assert set(cluster.info.worker_checks) == {"localhost", "node2"}
        yield inv, cluster
    finally:
        inv.playbook("stop.yml", check=False)
        inv.kill_leftovers()
        Supervisor(tmp / "supervisor-node2").kill()


def _fmin(cluster: HyperoptCluster, exp_key: str, fn, n: int) -> MongoTrials:
    trials = MongoTrials(cluster.mongo_trial_url, exp_key=exp_key)
    trials.poll_interval_secs = 0.2
    fmin(
        fn,
        hp.uniform("x", -5, 5),
        algo=rand.suggest,
        max_evals=n,
        trials=trials,
        max_queue_len=3,
        show_progressbar=False,
    )
    trials.refresh()
    return trials


def test_worker_packages_import_and_each_instance_sees_its_gpu(two_hosts) -> None:
    _, cluster = two_hosts
    assert cluster.workers_per_host == {"localhost": [1, 3], "node2": [2]}
    trials = _fmin(cluster, "ops-gpu", gpu_and_six, 15)
    done = [t for t in trials.trials if t["state"] == 2]
    assert len(done) == 15
    seen = {}
    for t in done:
        instance = int(str(t["owner"]).split(":")[-2])
        assert t["result"]["six"] == "1.17.0"
        assert t["result"]["gpu"] == EXPECTED_GPU[instance], (instance, t["result"])
        seen[instance] = t["result"]["gpu"]
    assert len(seen) >= 2, seen
    with pymongo.MongoClient(cluster.info.pymongo_uri(), serverSelectionTimeoutMS=10000) as client:
        status = read_status(client, cluster.dbname, cluster.workers_per_host, "x")
    assert {w.instance: w.gpus for w in status.workers} == EXPECTED_GPU


def test_fmin_whose_trials_all_fail_names_the_first_error(two_hosts) -> None:
    _, cluster = two_hosts
    with pytest.raises(TrialsFailedError, match=f"ModuleNotFoundError: No module named '{MISSING}'") as info:
        _fmin(cluster, "ops-fail", needs_missing_package, 3)
    assert "3 failed" in str(info.value) and len(info.value.errors) == 3
    # some trials DONE: fmin behaves as stock and returns the best point
    trials = MongoTrials(cluster.mongo_trial_url, exp_key="ops-mixed")
    best = fmin(
        fails_below_zero,
        hp.uniform("x", -5, 5),
        algo=rand.suggest,
        max_evals=8,
        trials=trials,
        max_queue_len=3,
        show_progressbar=False,
        rstate=__import__("numpy").random.default_rng(3),
    )
    assert best["x"] >= 0


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "pyhoptcluster"), *args], capture_output=True, text=True, timeout=600, **kwargs
    )


def test_experiments_lists_and_delete_asks_on_a_terminal(two_hosts) -> None:
    inv, cluster = two_hosts
    listed = {e.exp_key: e for e in cluster.experiments()}
    assert listed["ops-gpu"].trials == {"done": 15} and listed["ops-fail"].trials == {"error": 3}
    out = _cli("experiments", "-i", str(inv.path))
    assert out.returncode == 0, out.stderr
    assert "exp_key" in out.stdout and "best loss" in out.stdout
    row = next(line.split() for line in out.stdout.splitlines() if line.startswith("ops-gpu "))
    assert row[1] == "15"

    db = pymongo.MongoClient(cluster.info.pymongo_uri(), serverSelectionTimeoutMS=10000)[cluster.dbname]
    assert db.fs.files.count_documents({"exp_key": "ops-fail"}) > 0  # the pickled domain
    # no terminal, no --yes: refused, nothing deleted
    refused = _cli("delete", "-i", str(inv.path), "--exp-key", "ops-fail", stdin=subprocess.DEVNULL)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert db.jobs.count_documents({"exp_key": "ops-fail"}) == 3

    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for answer, rc in (("n", 1), ("y", 0)):
        child = pexpect.spawn(
            str(BIN / "pyhoptcluster"),
            ["delete", "-i", str(inv.path), "--exp-key", "ops-fail"],
            env=env,
            encoding="utf-8",
            timeout=300,
        )
        child.expect_exact("Delete 3 trials of experiment ops-fail? [y/N] ")
        child.sendline(answer)
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == rc, child.before
        left = db.jobs.count_documents({"exp_key": "ops-fail"})
        assert left == (3 if answer == "n" else 0)
    assert db.fs.files.count_documents({"exp_key": "ops-fail"}) == 0

    forced = _cli("delete", "-i", str(inv.path), "--exp-key", "ops-mixed", "--yes", stdin=subprocess.DEVNULL)
    assert forced.returncode == 0 and "deleted 8 trials" in forced.stdout, forced.stderr
    assert cluster.delete_experiment("ops-gpu") == 15
    assert cluster.experiments() == []
    db.client.close()


def fails_with_marker(x: float) -> float:
    raise RuntimeError(f"pyhoptcluster-logs-marker x={x}")


def _owner_of_failed(cluster: HyperoptCluster, exp_key: str) -> dict[str, tuple[str, int]]:
    """marker text -> (inventory host, instance) of the worker that ran the failed trial."""
    placed = {i: host for host, ids in cluster.workers_per_host.items() for i in ids}
    with pymongo.MongoClient(cluster.info.pymongo_uri(), serverSelectionTimeoutMS=10000) as client:
        failed = list(client[cluster.dbname].jobs.find({"exp_key": exp_key, "state": 3}))
    found = {}
    for t in failed:  # (MongoTrials.trials leaves ERROR trials out)
        instance = int(str(t["owner"]).split(":")[-2])
        found[t["error"][1]] = (placed[instance], instance)
    assert found, f"no failed trial of {exp_key}"
    return found


def test_logs_merge_server_and_worker_lines_tagged_with_host_and_instance(two_hosts) -> None:
    inv, cluster = two_hosts
    started = time.time()
    with pytest.raises(TrialsFailedError):
        _fmin(cluster, "ops-logs", fails_with_marker, 3)
    where = _owner_of_failed(cluster, "ops-logs")
    t0 = time.monotonic()
    lines = cluster.logs(lines=400)
    print(f"logs of the 2-host local cluster: {len(lines)} lines in {time.monotonic() - t0:.1f} s")
    assert [line.time for line in lines] == sorted(line.time for line in lines)
    assert {(line.host, line.tag) for line in lines} >= {
        ("localhost", "server"),
        ("localhost", "worker[1]"),
        ("localhost", "worker[3]"),
        ("node2", "worker[2]"),
    }
    assert not any(line.host == "node2" and line.source == "server" for line in lines)
    for marker, (host, instance) in where.items():
        # the traceback line with the error is tagged with the worker that ran the trial, and only it
        tagged = {(line.host, line.instance) for line in lines if marker in line.text}
        assert tagged == {(host, instance)}, (marker, tagged)
        hit = next(line for line in lines if marker in line.text)
        assert started - 5 <= hit.time <= time.time() + 5, (hit, started)
    password = cluster.info.password()
    assert password and not any(password in line.text for line in lines)

    # only one worker, only recent lines: the CLI, plain text (no terminal, no escape codes)
    out = _cli("logs", "-i", str(inv.path), "--host", "node2", "--instance", "2", "--since", "10m")
    assert out.returncode == 0, out.stderr
    shown = out.stdout.splitlines()
    assert shown and all(line.split()[2:4] == ["node2", "worker[2]:"] for line in shown), shown[:5]
    assert "\x1b" not in out.stdout
    unknown = _cli("logs", "-i", str(inv.path), "--host", "nope")
    assert unknown.returncode == 2 and "nope is not a host of the cluster" in unknown.stderr, unknown.stderr
    assert "localhost, node2" in unknown.stderr


def test_logs_follow_prints_a_new_line_as_it_appears(two_hosts) -> None:
    inv, cluster = two_hosts
    follower = subprocess.Popen(
        [str(BIN / "pyhoptcluster"), "logs", "-i", str(inv.path), "--follow", "--since", "1s"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # Ctrl-C below goes to its process group, as a terminal's does
    )
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(follower.stdout), daemon=True)
    reader.start()
    try:
        time.sleep(3)  # the first read is under way or done: the marker below is new to it
        with pytest.raises(TrialsFailedError):
            _fmin(cluster, "ops-follow", fails_with_marker, 1)
        (marker,) = _owner_of_failed(cluster, "ops-follow")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not any(marker in line for line in seen):
            assert follower.poll() is None, follower.stderr.read()
            time.sleep(0.2)
        assert any(marker in line for line in seen), seen[-20:]
        assert len([line for line in seen if marker in line]) == 1  # shown once, not on every read
    finally:
        os.killpg(follower.pid, signal.SIGINT)  # Ctrl-C, at any moment of its read loop
        assert follower.wait(timeout=60) == 0, follower.stderr.read()
    for exp_key in ("ops-logs", "ops-follow"):
        cluster.delete_experiment(exp_key)


def test_drain_of_a_host_ends_its_worker_and_start_brings_it_back(two_hosts) -> None:
    inv, cluster = two_hosts
    node2 = Supervisor(inv.path.parent / "supervisor-node2")  # the supervisord of "host" node2
    before = {**inv.pids(), **node2.pids()}
    out = _cli("drain", "-i", str(inv.path), "--host", "node2", "--timeout", "120")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "node2" in out.stdout and "localhost" not in out.stdout, out.stdout
    node2.wait_for("hyperopt-worker-2", lambda state, pid: state == "EXITED", 30)  # exit 0: not restarted
    # the others run on, untouched; status says which one was drained
    assert inv.pids() == {n: p for n, p in before.items() if n != "hyperopt-worker-2"}
    states = {(w.host, w.instance): w.state for w in cluster.status().workers}
    assert states == {("localhost", 1): "idle", ("node2", 2): "drained", ("localhost", 3): "idle"}, states
    # a plain start() (no count) keeps the count and starts the drained worker again, the others untouched
    HyperoptCluster(str(inv.path), progress=False).start()
    node2.wait_for("hyperopt-worker-2", lambda state, pid: state == "RUNNING", 30)
    after = {**inv.pids(), **node2.pids()}
    assert {n: p for n, p in after.items() if n != "hyperopt-worker-2"} == {
        n: p for n, p in before.items() if n != "hyperopt-worker-2"
    }
    assert after["hyperopt-worker-2"] != before["hyperopt-worker-2"]
    trials = _fmin(cluster, "ops-drain", gpu_and_six, 9)
    assert 2 in {int(str(t["owner"]).split(":")[-2]) for t in trials.trials}
    cluster.delete_experiment("ops-drain")


def test_check_names_a_missing_package_and_a_version_mismatch_by_host(two_hosts) -> None:
    inv, cluster = two_hosts
    started = time.monotonic()
    fine = cluster.check(require=["six"])
    print(f"check on the warm 2-host local cluster: {time.monotonic() - started:.1f} s")
    assert fine.ok, fine.problems
    assert fine.hosts["node2"].packages["cloudpickle"] == fine.driver.packages["cloudpickle"]

    # a real version difference on one host: another cloudpickle in node2's venv only
    venv = Path(
        yaml.safe_load((inv.path / "hosts.yml").read_text())["all"]["children"]["hyperopt_workers"]["hosts"][
            "node2"
        ]["hyperopt_worker_venv"]
    )
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "cloudpickle==3.0.0"],
        check=True,
        timeout=600,
    )
    out = _cli("check", "-i", str(inv.path), "--require", "six", MISSING)
    assert out.returncode == 1, out.stdout + out.stderr
    problems = [line.strip() for line in out.stdout.splitlines() if line.startswith("  ")]
    assert (
        f"localhost: cannot import {MISSING} in the worker venv "
        f"(ModuleNotFoundError: No module named '{MISSING}')" in problems
    )
    assert any(p.startswith(f"node2: cannot import {MISSING}") for p in problems)
    assert any(p.startswith("node2: cloudpickle 3.0.0 on the worker") for p in problems), problems
    assert not any(p.startswith("localhost: cloudpickle") for p in problems)
    assert not any("six" in p for p in problems)
