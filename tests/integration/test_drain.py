"""Draining workers through the database (pyhoptcluster.control.drain): real servers, real worker processes,
a real fmin. A drained worker finishes the trial it runs, reserves no new one and exits 0."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from hyperopt.base import JOB_STATE_DONE, JOB_STATE_NEW
from worker_procs import FminThread, all_jobs, fmin_within, objectives, wait_for, write_config

from pyhoptcluster.control.drain import DrainResult, drain_workers, result_lines
from pyhoptcluster.control.status import ALIVE
from pyhoptcluster.worker import liveness

pytestmark = pytest.mark.integration

LEASE = {"HEARTBEAT": "0.5", "HEARTBEAT_GRACE": "2", "POLL_INTERVAL": "0.05"}


def records(client, dbname: str, *procs) -> dict[str, dict]:
    found = client[dbname][liveness.WORKERS_COLLECTION].find({"_id": {"$in": [p.owner for p in procs]}})
    return {r["_id"]: r for r in found}


def wait_alive(client, dbname: str, *procs) -> None:
    wait_for(
        lambda: (
            all(r.get("state") in ALIVE for r in records(client, dbname, *procs).values())
            and len(records(client, dbname, *procs)) == len(procs)
        ),
        60,
        "the workers' records",
    )


def test_drain_lets_the_busy_worker_finish_its_trial_and_every_worker_exit_0(
    mongo_server_auth, workers, tmp_path
):
    server, exp_key = mongo_server_auth, "drain-all"
    url = server.trials_url()
    gate = tmp_path / "gate"
    started = Path(f"{gate}.started")
    env = {"PYHOPTCLUSTER_TEST_GATE": str(gate)}
    keys = {"MONGO_URL": url, "INVENTORY_HOST": "node-a", **LEASE}
    config = write_config(tmp_path / "w.conf", EXP_KEY=exp_key, **keys)
    busy = workers.start(config, "1", env)
    # idle by construction: it only takes trials of another experiment, of which there are none
    idle = workers.start(write_config(tmp_path / "idle.conf", EXP_KEY="other", **keys), "2", env)
    # hyperopt counts only NEW trials against max_queue_len: trial 1 is queued while trial 0 runs
    driver = FminThread(url, exp_key, objectives.gated, 3, max_queue_len=1)
    driver.start()
    wait_for(lambda: started.exists() and started.read_text().strip(), 60, "the worker to start trial 0")
    assert int(started.read_text().split()[0]) == busy.pid
    with server.client() as client:
        wait_alive(client, server.dbname, busy, idle)
        box: dict[str, DrainResult] = {}
        waiter = threading.Thread(
            target=lambda: box.update(
                result=drain_workers(client, server.dbname, {"node-a": [1, 2]}, timeout=120)
            ),
            daemon=True,
        )
        waiter.start()
        assert idle.proc.wait(timeout=30) == 0  # the idle one leaves its wait and exits at once
        wait_for(lambda: "drain requested: finishing" in busy.log(), 30, "the busy worker to see the drain")
        assert busy.proc.poll() is None, "a drain never interrupts a running trial"
        (job,) = [j for j in all_jobs(server, exp_key) if j.get("owner") == busy.owner]
        assert job["state"] == 1 and waiter.is_alive()
        wait_for(
            lambda: any(j["state"] == JOB_STATE_NEW for j in all_jobs(server, exp_key)),
            60,
            "the next trial to be queued while trial 0 runs",
        )
        gate.touch()  # trial 0 ends; trial 1 waits in the queue
        assert busy.proc.wait(timeout=30) == 0
        waiter.join(30)
        result = box["result"]
        assert result.requested == result.drained == [("node-a", 1), ("node-a", 2)]
        assert result.still_running == result.gone == result.stopped == [] and result.complete
        jobs = all_jobs(server, exp_key)
        ran = [j for j in jobs if j.get("owner") in (busy.owner, idle.owner)]
        assert [(j["_id"], j["state"]) for j in ran] == [(job["_id"], JOB_STATE_DONE)]  # only that one
        assert [j.get("attempts") for j in ran] == [None] and ran[0]["result"]["pid"] == busy.pid
        assert all(j["state"] == JOB_STATE_NEW and j.get("owner") is None for j in jobs if j not in ran)
        recs = records(client, server.dbname, busy, idle)
        assert {r["state"] for r in recs.values()} == {"drained"}
        assert all(r.get("drain") is not None for r in recs.values())
        assert recs[busy.owner]["jobs_done"] == 1 and recs[idle.owner]["jobs_done"] == 0
        assert "drain requested: finished 1 jobs, exiting" in busy.log()
        assert "drain requested: finished 0 jobs, exiting" in idle.log()
        third = workers.start(config, "3", env)  # not drained: it finishes the experiment
        driver.join(60)
        assert not driver.is_alive() and driver.error is None
        jobs = all_jobs(server, exp_key)
        assert [j["state"] for j in jobs] == [JOB_STATE_DONE] * 3
        assert {j["owner"] for j in jobs if j["_id"] != job["_id"]} == {third.owner}
        assert third.stop() == 0


def test_drain_of_one_host_stops_only_its_workers_and_the_others_keep_evaluating(
    secantusd, workers, tmp_path
):
    # a one-node replica set: idle workers wait on a change stream, which the drain request must end
    server = secantusd.start(auth_user="pyhoptcluster", standalone=False)
    url, exp_key = server.trials_url(), "drain-host"
    procs = {}
    for host, instance in (("node-a", "1"), ("node-b", "2")):
        conf = write_config(
            tmp_path / f"{host}.conf", MONGO_URL=url, EXP_KEY=exp_key, INVENTORY_HOST=host, **LEASE
        )
        procs[host] = workers.start(conf, instance)
    a, b = procs["node-a"], procs["node-b"]
    placement = {"node-a": [1], "node-b": [2]}
    with server.client() as client:
        wait_alive(client, server.dbname, a, b)
        wait_for(lambda: "queue empty" in a.log() and "queue empty" in b.log(), 30, "both workers idle")
        for known in (placement, {}):  # the published placement, else the workers' records
            with pytest.raises(ValueError, match=r"'node-z'.*known hosts: node-a, node-b"):
                drain_workers(client, server.dbname, known, host="node-z")
        result = drain_workers(client, server.dbname, placement, host="node-a", timeout=60)
        assert result.requested == result.drained == [("node-a", 1)] and result.complete
        assert result_lines(result) == ["node-a worker 1: drained"]
        assert a.proc.wait(timeout=30) == 0
        assert b.proc.poll() is None
        assert "drain" not in records(client, server.dbname, b)[b.owner]
        fmin_within(60, url, exp_key, objectives.quadratic, 6, max_queue_len=2)
        jobs = all_jobs(server, exp_key)
        assert [j["state"] for j in jobs] == [JOB_STATE_DONE] * 6
        assert {j["owner"] for j in jobs} == {b.owner}
        again = drain_workers(client, server.dbname, placement, host="node-a", timeout=5)
        assert again.nothing_to_drain and result_lines(again) == ["no running workers to drain"]
        nowait = drain_workers(client, server.dbname, placement, wait=False)
        assert nowait.requested == nowait.still_running == [("node-b", 2)] and not nowait.waited
        assert b.proc.wait(timeout=30) == 0
        assert records(client, server.dbname, b)[b.owner]["state"] == "drained"
