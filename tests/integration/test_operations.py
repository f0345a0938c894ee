"""Operations on a real local cluster of two "hosts" (both on this machine, each with its own worker
venv and state dir): worker packages from Python, GPU pinning per instance, ``check`` (a missing
package, a real version difference), fmin's all-failed error, and ``experiments``/``delete``."""

from __future__ import annotations

import os
import subprocess
import sys
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
from local_cluster import BIN, LocalInventory, free_port, make_local_inventory

from pyhoptcluster import HyperoptCluster, TrialsFailedError
from pyhoptcluster.check import WorkerCheckWarning
from pyhoptcluster.status import read_status

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
