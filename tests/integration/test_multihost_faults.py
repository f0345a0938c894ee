"""Faults of issue 7 on real systemd hosts (the systemd-nspawn test bed, tests/hosts): a worker killed
with ``kill -9`` mid-trial, a host that stops answering mid-experiment (frozen through its cgroup, then
thawed), and a hung worker (SIGSTOP).

One module-scoped cluster of 6 workers over the 3 test hosts, with short leases (heartbeat 1 s, grace
4 s), its own server state dir and its own ports (away from test_multihost.py's). Every experiment is a
real ``fmin`` through plain ``MongoTrials`` in a thread; the test reads the jobs from the server. Only
processes of this test bed's hosts are signalled, by the pid systemd reports; a frozen host is always
thawed and a stopped worker always continued in ``finally``. The seconds each recovery took are printed
at teardown (not asserted: DESIGN, "no timed asserts in tests").
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import cloudpickle
import pymongo
import pytest
from hyperopt.base import JOB_STATE_DONE, JOB_STATE_RUNNING
from local_cluster import run_fmin
from multihost_env import Multihost, multihost_env
from worker_procs import wait_for

from pyhoptcluster import HyperoptCluster
from pyhoptcluster.errors import PlaybookError

pytestmark = [pytest.mark.integration, pytest.mark.multihost]

PORTS = list(range(27401, 27451))  # test_multihost.py uses 27301-27399
HEARTBEAT, GRACE = 1, 4
TRIAL_SECONDS = 3.0  # long enough to find a trial RUNNING on a host and fault it before it ends


def slow_objective(x: float) -> float:
    time.sleep(TRIAL_SECONDS)
    return (x - 1.5) ** 2


# The worker hosts cannot import this test module: pickle its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class Experiment(threading.Thread):
    """``run_fmin`` (plain MongoTrials, max_queue_len = workers) in a thread; ``finish`` joins it."""

    def __init__(self, url: str, exp_key: str, n: int, workers: int = 6) -> None:
        super().__init__(daemon=True, name=f"fmin-{exp_key}")
        self.args_ = (url, exp_key, n, workers)
        self.error: BaseException | None = None

    def run(self) -> None:
        url, exp_key, n, workers = self.args_
        try:
            run_fmin(url, exp_key, n, workers=workers, objective=slow_objective)
        except BaseException as exc:
            self.error = exc

    def finish(self, timeout: float) -> None:
        self.join(timeout)
        assert not self.is_alive(), f"fmin ({self.args_[1]}) did not return within {timeout} s"
        assert self.error is None, repr(self.error)


@dataclass
class Faults:
    cluster: HyperoptCluster
    jobs: pymongo.collection.Collection

    def running_on(self, exp_key: str, hostname: str) -> list[dict]:
        """RUNNING jobs of ``exp_key`` whose owner is a worker of ``hostname``."""
        query = {
            "exp_key": exp_key,
            "state": JOB_STATE_RUNNING,
            "owner": {"$regex": f"^{re.escape(hostname)}:"},
        }
        return list(self.jobs.find(query))

    def all(self, exp_key: str) -> list[dict]:
        return list(self.jobs.find({"exp_key": exp_key}, sort=[("tid", 1)]))

    def reclaimed(self, job_id) -> dict | None:
        return self.jobs.find_one({"_id": job_id, "attempts": {"$gte": 1}})


@pytest.fixture(scope="module")
def mh(testbed_hosts, secantusd_binary, tmp_path_factory) -> Iterator[Multihost]:
    tmp = tmp_path_factory.mktemp("multihost-faults")
    yield from multihost_env(testbed_hosts, secantusd_binary, tmp, PORTS, "multihost faults")


@pytest.fixture(scope="module")
def faults(mh: Multihost) -> Iterator[Faults]:
    inventory = mh.inventory(
        "faults",
        server="faults",
        hyperopt_worker_heartbeat=HEARTBEAT,
        hyperopt_worker_heartbeat_grace=GRACE,
    )
    cluster, _ = mh.cluster(inventory, cleanup=True)
    started = time.monotonic()
    cluster.start(worker_count=6)
    mh.timings["cold start(6)"] = time.monotonic() - started
    h1, h2, h3 = mh.ips
    assert cluster.workers_per_host == {h1: [1, 4], h2: [2, 5], h3: [3, 6]}
    for ip in mh.ips:  # the short lease reached every worker's config
        conf = mh.ssh(
            ip, "grep -E '^HYPEROPT_WORKER_HEARTBEAT(_GRACE)?=' /var/lib/pyhoptcluster-worker/worker.conf"
        )
        assert conf.split() == [
            f"HYPEROPT_WORKER_HEARTBEAT={HEARTBEAT}",
            f"HYPEROPT_WORKER_HEARTBEAT_GRACE={GRACE}",
        ]
    client = pymongo.MongoClient(cluster.info.pymongo_uri(), serverSelectionTimeoutMS=10000)
    try:
        yield Faults(cluster, client[cluster.dbname]["jobs"])
    finally:
        client.close()


def _unit(instance: int | str) -> str:
    return f"hyperopt-worker@{instance}.service"


def _show(mh: Multihost, host: str, unit: str) -> tuple[str, int, int]:
    """(ActiveState, MainPID, NRestarts) of a unit on a host."""
    out = mh.ssh(host, f"systemctl show -p ActiveState -p MainPID -p NRestarts {unit}")
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return props["ActiveState"], int(props["MainPID"] or 0), int(props["NRestarts"] or 0)


def _owned_by_unit(mh: Multihost, host: str, job: dict) -> tuple[str, int]:
    """The unit and MainPID of the worker that owns ``job`` (owner ``<hostname>:<instance>:<pid>``),
    checked against what systemd says runs there."""
    hostname, instance, pid = job["owner"].rsplit(":", 2)
    assert hostname == mh.hostnames[host], job["owner"]
    unit = _unit(instance)
    active, main_pid, _ = _show(mh, host, unit)
    assert (active, main_pid) == ("active", int(pid)), (unit, active, main_pid, job["owner"])
    return unit, main_pid


def _late_results_dropped(
    mh: Multihost, host: str, units: list[str], faults: Faults, done: list[dict]
) -> None:
    """The faulted workers went on, noticed that their trials were taken from them (each says so in
    its journal, naming the job) and wrote nothing over the re-runs."""
    journal = (
        "journalctl --no-pager -o cat " + " ".join(f"-u {u}" for u in units) + " | grep 'no longer ours'"
    )

    def noticed() -> bool:
        lines = mh.tb.ssh(host, journal).stdout
        return all(f"job {job['_id']} " in lines for job in done)

    wait_for(noticed, 60, f"{', '.join(units)} on {host} to notice that their trials were reclaimed")
    for job in done:
        again = faults.jobs.find_one({"_id": job["_id"]})
        assert (again["state"], again["owner"], again["version"]) == (
            JOB_STATE_DONE,
            job["owner"],
            job["version"],
        )


# -- kill -9 of a worker mid-trial --------------------------------------------------------------------


def test_kill_9_of_a_worker_mid_trial_reruns_its_trial_and_systemd_restarts_the_worker(mh, faults):
    h1, exp_key = mh.ips[0], "mh-kill9"
    experiment = Experiment(faults.cluster.mongo_trial_url, exp_key, 12)
    experiment.start()
    job = wait_for(
        lambda: (faults.running_on(exp_key, mh.hostnames[h1]) or [None])[0], 120, f"a trial on {h1}"
    )
    unit, pid = _owned_by_unit(mh, h1, job)
    _, _, restarts = _show(mh, h1, unit)

    mh.ssh(h1, f"kill -9 {pid}")
    killed = time.monotonic()
    requeued = wait_for(lambda: faults.reclaimed(job["_id"]), 60, f"trial {job['tid']} to be re-queued")
    mh.timings["kill -9 -> re-queued"] = time.monotonic() - killed
    (reclaim,) = requeued["reclaims"]
    assert reclaim["owner"] == job["owner"] and reclaim["silent_for"] >= GRACE

    def restarted():
        active, new_pid, n = _show(mh, h1, unit)
        return active == "active" and new_pid not in (0, pid) and (new_pid, n)

    new_pid, n_restarts = wait_for(restarted, 60, f"systemd to restart {unit} on {h1}")
    mh.timings["kill -9 -> new MainPID"] = time.monotonic() - killed
    assert n_restarts == restarts + 1

    experiment.finish(180)
    jobs = faults.all(exp_key)
    assert len(jobs) == 12 and [j["state"] for j in jobs] == [JOB_STATE_DONE] * 12
    rerun = next(j for j in jobs if j["_id"] == job["_id"])
    assert rerun["attempts"] == 1 and rerun["reclaims"][0]["owner"] == job["owner"]
    assert rerun["owner"] != job["owner"] and rerun["result"]["status"] == "ok"
    # by itself: this test never called start() again
    assert _show(mh, h1, unit)[:2] == ("active", new_pid)


# -- a host that stops answering (frozen), then comes back ---------------------------------------------


def test_frozen_host_trials_are_finished_elsewhere_and_start_names_it_while_the_others_keep_theirs(
    mh, faults
):
    h1, h2, h3 = mh.ips
    exp_key, lost = "mh-frozen", mh.hostnames[h2]
    testbed = mh.testbed()
    before = mh.running()
    experiment = Experiment(faults.cluster.mongo_trial_url, exp_key, 24)
    experiment.start()
    # both of h2's workers are in the middle of a trial when it stops answering
    on_h2 = wait_for(
        lambda: (jobs := faults.running_on(exp_key, lost)) and len({j["owner"] for j in jobs}) == 2 and jobs,
        120,
        f"a trial on each worker of {h2}",
    )
    for job in on_h2:
        _owned_by_unit(mh, h2, job)

    testbed.freeze(h2)
    try:
        frozen_at = time.monotonic()
        for job in on_h2:
            wait_for(lambda job=job: faults.reclaimed(job["_id"]), 60, f"trial {job['tid']} to be re-queued")
        mh.timings["freeze -> re-queued"] = time.monotonic() - frozen_at

        experiment.finish(240)
        jobs = faults.all(exp_key)
        assert len(jobs) == 24 and [j["state"] for j in jobs] == [JOB_STATE_DONE] * 24
        for job in on_h2:
            rerun = next(j for j in jobs if j["_id"] == job["_id"])
            assert rerun["attempts"] == 1 and rerun["reclaims"][0]["owner"] == job["owner"]
            assert rerun["owner"].split(":")[0] in {mh.hostnames[h1], mh.hostnames[h3]}

        # still frozen: the next start() names it, and the other hosts keep their workers
        started = time.monotonic()
        with pytest.raises(PlaybookError) as err:
            faults.cluster.start(worker_count=6)
        mh.timings["start() -> frozen host named"] = time.monotonic() - started
        message = str(err.value)
        assert f"{h2} unreachable" in message and f"Unreachable: {h2}" in message, message
        assert f"Cluster state: {h1} runs workers 1, 4; {h3} runs workers 3, 6" in message, message
        assert f"unknown on {h2}" in message, message
        assert (mh.running_on(h1), mh.running_on(h3)) == (before[h1], before[h3])
    finally:
        testbed.thaw(h2)

    # back: h2's workers were only frozen, not killed; their late results do not land over the re-runs
    assert mh.running_on(h2) == before[h2]
    rerun = [next(j for j in jobs if j["_id"] == job["_id"]) for job in on_h2]
    _late_results_dropped(mh, h2, [_unit(i) for i in before[h2]], faults, rerun)
    started = time.monotonic()
    faults.cluster.start(worker_count=6)
    mh.timings["warm start(6) after thaw"] = time.monotonic() - started  # beside the failing one's
    assert faults.cluster.workers_per_host == {h1: [1, 4], h2: [2, 5], h3: [3, 6]}
    assert mh.running() == before


# -- a hung worker (SIGSTOP) ---------------------------------------------------------------------------


def test_sigstopped_worker_trial_is_reclaimed_after_the_grace_and_it_goes_on_after_sigcont(mh, faults):
    h3, exp_key = mh.ips[2], "mh-sigstop"
    experiment = Experiment(faults.cluster.mongo_trial_url, exp_key, 12)
    experiment.start()
    job = wait_for(
        lambda: (faults.running_on(exp_key, mh.hostnames[h3]) or [None])[0], 120, f"a trial on {h3}"
    )
    unit, pid = _owned_by_unit(mh, h3, job)
    mh.ssh(h3, f"kill -STOP {pid}")
    try:
        stopped = time.monotonic()
        wait_for(lambda: faults.reclaimed(job["_id"]), 60, f"trial {job['tid']} to be re-queued")
        mh.timings["SIGSTOP -> re-queued"] = time.monotonic() - stopped
        experiment.finish(180)
    finally:
        mh.ssh(h3, f"kill -CONT {pid}")
    jobs = faults.all(exp_key)
    assert len(jobs) == 12 and [j["state"] for j in jobs] == [JOB_STATE_DONE] * 12
    rerun = next(j for j in jobs if j["_id"] == job["_id"])
    assert rerun["attempts"] == 1 and rerun["reclaims"][0]["owner"] == job["owner"]
    assert rerun["owner"] != job["owner"]
    _late_results_dropped(mh, h3, [unit], faults, [rerun])
    assert _show(mh, h3, unit)[:2] == ("active", pid)  # hung, not dead: the same process goes on


def test_recovery_timings_are_recorded(mh):
    # printed at teardown; not a timed assert
    assert {"kill -9 -> re-queued", "kill -9 -> new MainPID", "freeze -> re-queued"} <= set(mh.timings)
    assert "start() -> frozen host named" in mh.timings
