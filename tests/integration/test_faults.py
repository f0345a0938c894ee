"""Faults caused for real against real workers, a real server and a real fmin driver.

Workers beat every 0.5 s and are taken for dead after 2 s of silence (HYPEROPT_WORKER_HEARTBEAT /
_HEARTBEAT_GRACE), so a reclaim is seen within seconds. Only processes the test started are
signalled, by their pid. The local cluster's supervision (a crashed worker or server started again)
is tested with the roles, in test_supervision.py; the systemd test hosts in test_multihost.py.
"""

from __future__ import annotations

import datetime
import os
import signal
import threading
import time
from pathlib import Path

import pymongo
import pytest
from hyperopt.base import JOB_STATE_DONE, JOB_STATE_ERROR, JOB_STATE_NEW, JOB_STATE_RUNNING
from worker_procs import FminThread, WorkerProc, Workers, all_jobs, objectives, wait_for, write_config

from pyhoptcluster.worker import liveness

pytestmark = pytest.mark.integration

FAST_LEASE = {"HEARTBEAT": "0.5", "HEARTBEAT_GRACE": "2", "POLL_INTERVAL": "0.05"}


def start_worker(workers: Workers, tmp: Path, url: str, exp_key: str, name: str, **keys: str) -> WorkerProc:
    """A worker of ``exp_key``; ``gate=`` a file it blocks on in objectives.gated (absent = closed)."""
    gate = keys.pop("gate", str(tmp / "open-gate"))
    env = {"PYHOPTCLUSTER_TEST_GATE": gate, "PYHOPTCLUSTER_TEST_MARK": str(tmp / f"mark-{exp_key}")}
    config = write_config(
        tmp / f"worker-{name}.conf", MONGO_URL=url, EXP_KEY=exp_key, **{**FAST_LEASE, **keys}
    )
    return workers.start(config, name, env=env)


def the_job(server, exp_key: str, **query) -> dict | None:
    with server.client() as client:
        return client[server.dbname].jobs.find_one({"exp_key": exp_key, **query})


def finish(driver: FminThread, timeout: float) -> None:
    driver.join(timeout)
    assert not driver.is_alive(), f"fmin did not return within {timeout} s"


@pytest.fixture
def open_gate(tmp_path: Path) -> Path:
    gate = tmp_path / "open-gate"
    gate.touch()
    return gate


def test_killed_worker_trial_goes_back_to_queue_with_no_worker_alive_and_is_rerun(
    mongo_server_auth, workers, tmp_path, open_gate
):
    server, exp_key = mongo_server_auth, "kill9"
    url = server.trials_url()
    doomed = start_worker(workers, tmp_path, url, exp_key, "a", gate=str(tmp_path / "closed-gate"))
    driver = FminThread(url, exp_key, objectives.gated, 4, max_queue_len=1)
    driver.start()
    job = wait_for(lambda: the_job(server, exp_key, owner=doomed.owner, state=JOB_STATE_RUNNING), 60, "a job")
    assert isinstance(job["heartbeat"], type(job["book_time"])) and job["heartbeat_grace"] == 2.0

    doomed.stop(signal.SIGKILL)
    # no worker is alive: the driver's own sweep puts the trial back in the queue
    requeued = wait_for(lambda: the_job(server, exp_key, _id=job["_id"], state=JOB_STATE_NEW), 30, "requeue")
    assert requeued["attempts"] == 1 and requeued["owner"] is None and "heartbeat" not in requeued
    (reclaim,) = requeued["reclaims"]
    assert reclaim["owner"] == doomed.owner
    assert reclaim["reason"].startswith(f"no heartbeat from {doomed.owner.rsplit(':', 1)[0]} for ")

    rescuer = start_worker(workers, tmp_path, url, exp_key, "b")
    finish(driver, 60)
    assert driver.error is None
    jobs = all_jobs(server, exp_key)
    assert [j["state"] for j in jobs] == [JOB_STATE_DONE] * 4
    rerun = next(j for j in jobs if j["_id"] == job["_id"])
    assert rerun["owner"] == rescuer.owner and rerun["attempts"] == 1


def test_sigstopped_worker_trial_is_reclaimed_and_its_late_result_is_dropped(
    mongo_server_auth, workers, tmp_path, open_gate
):
    server, exp_key = mongo_server_auth, "sigstop"
    url = server.trials_url()
    gate = tmp_path / "hung-gate"
    hung = start_worker(workers, tmp_path, url, exp_key, "a", gate=str(gate))
    driver = FminThread(url, exp_key, objectives.gated, 6, max_queue_len=2)
    driver.start()
    job = wait_for(lambda: the_job(server, exp_key, owner=hung.owner, state=JOB_STATE_RUNNING), 60, "a job")
    os.kill(hung.pid, signal.SIGSTOP)
    try:
        healthy = start_worker(workers, tmp_path, url, exp_key, "b")
        finish(driver, 90)
        assert driver.error is None
        jobs = all_jobs(server, exp_key)
        assert [j["state"] for j in jobs] == [JOB_STATE_DONE] * 6
        rerun = next(j for j in jobs if j["_id"] == job["_id"])
        assert rerun["owner"] == healthy.owner and rerun["reclaims"][0]["owner"] == hung.owner
        done_version = rerun["version"]
    finally:
        os.kill(hung.pid, signal.SIGCONT)
    gate.touch()  # the hung objective returns now: its result must not land over the re-run
    wait_for(lambda: "no longer ours" in hung.log(), 30, "the hung worker to notice it lost the job")
    after = the_job(server, exp_key, _id=job["_id"])
    assert after["owner"] == healthy.owner and after["version"] == done_version
    assert len(all_jobs(server, exp_key)) == 6, "no trial counted twice"
    assert hung.stop() == 0 and healthy.stop() == 0


def test_trial_of_workers_that_keep_hanging_becomes_error_after_max_attempts_and_fmin_returns(
    mongo_server_auth, workers, tmp_path
):
    server, exp_key = mongo_server_auth, "maxattempts"
    url = server.trials_url()
    pool = [start_worker(workers, tmp_path, url, exp_key, name, MAX_ATTEMPTS="2") for name in "ab"]
    driver = FminThread(url, exp_key, objectives.stop_self, 1, max_queue_len=1)
    driver.start()
    try:
        finish(driver, 60)
    finally:
        for worker in pool:  # frozen by their objective: end them (SIGKILL works on stopped processes)
            worker.stop(signal.SIGKILL)
    (job,) = all_jobs(server, exp_key)
    assert job["state"] == JOB_STATE_ERROR and job["attempts"] == 2
    kind, reason = job["error"]
    assert kind == liveness.LOST_ERROR_TYPE
    assert "no heartbeat from" in reason and "2 attempts" in reason and "max_attempts=2" in reason
    assert {r["owner"] for r in job["reclaims"]} == {w.owner for w in pool}


def test_two_sweepers_racing_reclaim_each_stale_job_once(mongo_server):
    db = pymongo.MongoClient(mongo_server.url)["racing"]
    db.jobs.drop()
    with db.client:
        old = liveness.server_now(db) - datetime.timedelta(seconds=30)
        db.jobs.insert_many(
            [
                {
                    "tid": i,
                    "exp_key": "race",
                    "state": JOB_STATE_RUNNING,
                    "owner": f"h:{i}:1",
                    "version": 0,
                    "heartbeat": old,
                    "heartbeat_grace": 1.0,
                    "max_attempts": 3,
                }
                for i in range(20)
            ]
        )
        barrier = threading.Barrier(8)
        results: list[list[liveness.Reclaimed]] = []

        def sweeper() -> None:
            with pymongo.MongoClient(mongo_server.url) as client:
                barrier.wait()
                results.append(liveness.sweep(client["racing"].jobs, "race"))

        threads = [threading.Thread(target=sweeper) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sum(len(r) for r in results) == 20
        assert sorted(item.tid for r in results for item in r) == list(range(20))
        for job in db.jobs.find():
            assert job["state"] == JOB_STATE_NEW and job["attempts"] == 1 and len(job["reclaims"]) == 1


@pytest.mark.parametrize("isolation", ["inprocess", "subprocess"])
def test_trial_past_its_timeout_is_recorded_error_and_the_worker_goes_on(
    mongo_server_auth, workers, tmp_path, isolation
):
    server, exp_key = mongo_server_auth, f"timeout-{isolation}"
    url = server.trials_url()
    worker = start_worker(workers, tmp_path, url, exp_key, "a", TRIAL_TIMEOUT="1", ISOLATION=isolation)
    driver = FminThread(url, exp_key, objectives.first_call_sleeps, 3, max_queue_len=1)
    started = time.monotonic()
    driver.start()
    finish(driver, 45)
    assert time.monotonic() - started < 40, "the 60 s trial was stopped"
    jobs = all_jobs(server, exp_key)
    assert sorted(j["state"] for j in jobs) == [JOB_STATE_DONE, JOB_STATE_DONE, JOB_STATE_ERROR]
    (failed,) = [j for j in jobs if j["state"] == JOB_STATE_ERROR]
    assert "wall-clock limit of 1 s" in failed["error"][1] and "TrialTimeout" in failed["error"][0]
    assert worker.proc.poll() is None, "the worker goes on"
    assert worker.stop() == 0


def test_worker_exits_cleanly_after_max_jobs_and_its_record_says_so(
    mongo_server_auth, workers, tmp_path, open_gate
):
    server, exp_key = mongo_server_auth, "maxjobs"
    url = server.trials_url()
    worker = start_worker(workers, tmp_path, url, exp_key, "a", MAX_JOBS="2")
    driver = FminThread(url, exp_key, objectives.gated, 2, max_queue_len=2)
    driver.start()
    finish(driver, 60)
    assert worker.proc.wait(timeout=30) == 0
    assert "finished 2 jobs (HYPEROPT_WORKER_MAX_JOBS=2): exiting" in worker.log()
    with server.client() as client:
        record = client[server.dbname][liveness.WORKERS_COLLECTION].find_one({"_id": worker.owner})
    assert record["state"] == "exited" and record["jobs_done"] == 2 and record["pid"] == worker.pid
    assert record["instance"] == "a" and record["job"] is None


def test_driver_survives_a_server_outage_longer_than_pymongos_30_s(secantusd, workers, tmp_path, open_gate):
    server = secantusd.start(auth_user="pyhoptcluster", auth_password="outage-pw")
    url, exp_key = server.trials_url(), "outage"
    worker = start_worker(workers, tmp_path, url, exp_key, "a")
    driver = FminThread(url, exp_key, objectives.quadratic, 40, max_queue_len=1)
    driver.start()
    wait_for(
        lambda: len([j for j in all_jobs(server, exp_key) if j["state"] == JOB_STATE_DONE]) >= 5, 60, "5 done"
    )
    os.kill(server.pid, signal.SIGKILL)
    server.proc.wait(timeout=10)
    time.sleep(35)  # longer than pymongo's default serverSelectionTimeoutMS, which killed the driver
    assert driver.is_alive(), f"the driver died during the outage: {driver.error!r}"
    server = secantusd.restart(server)
    finish(driver, 120)
    assert driver.error is None
    jobs = all_jobs(server, exp_key)
    assert len(jobs) == 40 and all(j["state"] == JOB_STATE_DONE for j in jobs)
    assert len({j["tid"] for j in jobs}) == 40
    assert worker.proc.poll() is None and worker.stop() == 0
