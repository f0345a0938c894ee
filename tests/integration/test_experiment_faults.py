"""An unattended experiment on the supervised local cluster survives a killed worker and a killed
server: real HyperoptCluster, real supervisord (PID 1 is not systemd here), a real fmin through
plain MongoTrials; kill -9 of pids read from the cluster's own supervisord."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import pymongo
import pytest
from hyperopt.base import JOB_STATE_DONE, JOB_STATE_RUNNING
from hyperopt.mongoexp import MongoTrials
from local_cluster import LocalInventory, fmin_in_background, free_port, make_local_inventory
from worker_procs import wait_for

from pyhoptcluster import HyperoptCluster

pytestmark = pytest.mark.integration

N = 24


def objective(x: float) -> float:
    time.sleep(1.0)
    return (x - 2.0) ** 2


cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this module


@pytest.fixture
def inventory(tmp_path: Path) -> Iterator[LocalInventory]:
    inv = make_local_inventory(
        tmp_path,
        hyperopt_mongodb_port=free_port(),
        hyperopt_worker_heartbeat=1,
        hyperopt_worker_heartbeat_grace=4,
    )
    try:
        yield inv
    finally:
        inv.playbook("stop.yml", check=False)
        inv.kill_leftovers()


def test_killed_worker_and_killed_server_come_back_and_the_experiment_completes(inventory):
    cluster = HyperoptCluster(str(inventory.path), progress=False)
    cluster.start(worker_count=2)
    sup = inventory.supervisor
    jobs = pymongo.MongoClient(cluster.info.pymongo_uri(), serverSelectionTimeoutMS=60000)[
        cluster.dbname
    ].jobs
    trials = MongoTrials(cluster.mongo_trial_url, exp_key="overnight")
    driver, errors = fmin_in_background(trials, objective, N, max_queue_len=2)

    # kill -9 worker 1 while it runs a trial
    old_worker = sup.pids()["hyperopt-worker-1"]
    job = wait_for(
        lambda: jobs.find_one(
            {"exp_key": "overnight", "state": JOB_STATE_RUNNING, "owner": {"$regex": f":1:{old_worker}$"}}
        ),
        120,
        "worker 1 on a trial",
    )
    sup_status = sup.status()
    assert sup_status["hyperopt-worker-1"][0] == "RUNNING"

    os.kill(old_worker, signal.SIGKILL)
    # the trial it was running (read after the kill: the dead worker cannot change it any more)
    job = jobs.find_one({"exp_key": "overnight", "state": JOB_STATE_RUNNING, "owner": job["owner"]}) or job
    new_worker = wait_for(
        lambda: (p := sup.pids().get("hyperopt-worker-1")) and p != old_worker and p,
        60,
        "supervisord to start worker 1 again",
    )

    # kill -9 the server mid-experiment: DONE trials so far must survive it
    wait_for(
        lambda: jobs.count_documents({"exp_key": "overnight", "state": JOB_STATE_DONE}) >= 10, 180, "10 done"
    )
    done_before = {
        d["_id"] for d in jobs.find({"exp_key": "overnight", "state": JOB_STATE_DONE}, projection=[])
    }
    old_server = sup.pids()["hyperopt-mongodb"]
    os.kill(old_server, signal.SIGKILL)
    wait_for(lambda: (p := sup.pids().get("hyperopt-mongodb")) and p != old_server, 60, "the server back")

    driver.join(300)
    assert not driver.is_alive(), "fmin did not return"
    assert not errors, errors
    docs = list(jobs.find({"exp_key": "overnight"}))
    assert len(docs) == N and all(d["state"] == JOB_STATE_DONE for d in docs)
    assert done_before <= {d["_id"] for d in docs if d["state"] == JOB_STATE_DONE}, "a DONE trial was lost"
    rerun = next(d for d in docs if d["_id"] == job["_id"])
    assert rerun["attempts"] == 1 and rerun["reclaims"][0]["owner"].endswith(f":1:{old_worker}")

    status = cluster.status()
    w1 = next(w for w in status.workers if w.instance == 1)
    assert w1.pid == new_worker and w1.restarts == 1 and w1.state in ("idle", "busy")
    (exp,) = [e for e in status.experiments if e.exp_key == "overnight"]
    assert exp.trials == {"done": N}
    cluster.cleanup()
