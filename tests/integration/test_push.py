"""Push before poll: idle workers wait on a change stream where the server has them (a one-node
replica set, SecantusDB's default), and poll where it does not (--standalone). Real servers, real
workers, a real fmin; request counts from the server's own opcounters."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from hyperopt import fmin, rand
from hyperopt.base import JOB_STATE_DONE
from hyperopt.mongoexp import MongoTrials
from worker_procs import SPACE, all_jobs, fmin_within, objectives, wait_for, write_config

pytestmark = pytest.mark.integration


def requests(client) -> int:
    counters = client.admin.command("serverStatus")["opcounters"]
    return sum(int(v) for v in counters.values())


def idle_requests_per_s(server, seconds: float = 10.0) -> float:
    """Requests/s the server got over an idle period, from one client connected before it (so no
    connection handshake of ours is in the window) whose monitor does not beat in it."""
    with server.client(directConnection=True, heartbeatFrequencyMS=120000) as client:
        before = requests(client)
        time.sleep(seconds)  # measuring an idle period: nothing to wait for
        return (requests(client) - before - 1) / seconds  # -1: our second serverStatus


@pytest.mark.parametrize("standalone", [False, True], ids=["replica-set-push", "standalone-poll"])
def test_idle_worker_waits_on_a_change_stream_where_it_can_and_polls_where_it_cannot(
    secantusd, workers, tmp_path, standalone
):
    server = secantusd.start(standalone=standalone)
    url, exp_key = server.trials_url(), "push"
    config = write_config(
        tmp_path / "w.conf", MONGO_URL=url, EXP_KEY=exp_key, POLL_INTERVAL="0.1", HEARTBEAT="10"
    )
    worker = workers.start(config, "1")
    wait_for(lambda: "queue empty" in worker.log(), 60, "the worker to go idle")
    time.sleep(1)
    rate = idle_requests_per_s(server)
    mode = "standalone (poll)" if standalone else "replica set (push)"
    print(f"idle worker, {mode}: {rate:.2f} requests/s")
    if standalone:
        assert "no change streams" in worker.log()
        assert rate > 5, f"polling every 0.1 s asks the server ~10 times a second, saw {rate:.1f}/s"
    else:
        assert "no change streams" not in worker.log()
        assert rate <= 1.5, f"an idle worker on a change stream costs ~1 request/s, saw {rate:.1f}/s"
    fmin_within(120, url, exp_key, objectives.quadratic, 8, max_queue_len=2)
    assert [j["state"] for j in all_jobs(server, exp_key)] == [JOB_STATE_DONE] * 8
    assert worker.stop() == 0


def test_driver_wakes_on_finished_trials_instead_of_sleeping_its_poll_interval(secantusd, workers, tmp_path):
    """A driver poll of 60 s: stock fmin would take >= 60 s per refill of the queue; woken by the
    change stream of finished trials it queues the next trial at once."""
    server = secantusd.start(standalone=False)
    url, exp_key = server.trials_url(), "wake"
    config = write_config(tmp_path / "w.conf", MONGO_URL=url, EXP_KEY=exp_key)
    pool = [workers.start(config, str(i)) for i in (1, 2)]
    for w in pool:
        wait_for(lambda w=w: "queue empty" in w.log(), 60, "the workers to go idle")
    trials = MongoTrials(url, exp_key=exp_key)
    trials.poll_interval_secs = 60
    driver = threading.Thread(
        target=fmin,
        args=(objectives.quadratic, SPACE),
        kwargs={
            "algo": rand.suggest,
            "max_evals": 12,
            "trials": trials,
            "max_queue_len": 2,
            "show_progressbar": False,
        },
        daemon=True,
    )
    driver.start()
    driver.join(50)  # the 5 refills after the first would take 5 x 60 s polling
    assert not driver.is_alive(), "the driver slept its poll interval instead of waking on finished trials"
    assert [j["state"] for j in all_jobs(server, exp_key)] == [JOB_STATE_DONE] * 12


def test_many_workers_and_a_slow_server_run_every_trial_exactly_once(secantusd, workers, tmp_path):
    """Eight workers woken by change streams, the driver's incremental refresh and its cached count of
    finished trials, and a server that keeps freezing (SIGSTOP 0.2 s of every 0.5 s): every trial is
    reserved by one worker, run once and recorded DONE once."""
    server = secantusd.start(standalone=False)
    url, exp_key, n = server.trials_url(), "exactly-once", 80
    calls = tmp_path / "calls.txt"
    config = write_config(tmp_path / "w.conf", MONGO_URL=url, EXP_KEY=exp_key, POLL_INTERVAL="0.1")
    started = [workers.start(config, str(i), env={"PYHOPTCLUSTER_TEST_CALLS": str(calls)}) for i in range(8)]
    for w in started:
        wait_for(lambda w=w: "queue empty" in w.log(), 60, f"worker {w.instance} to go idle")
    done = threading.Event()

    def freeze_server_again_and_again() -> None:
        try:
            while not done.is_set():
                os.kill(server.pid, signal.SIGSTOP)
                time.sleep(0.2)  # the server frozen: requests pile up in its socket
                os.kill(server.pid, signal.SIGCONT)
                done.wait(0.3)
        finally:
            os.kill(server.pid, signal.SIGCONT)

    slow = threading.Thread(target=freeze_server_again_and_again, daemon=True)
    slow.start()
    try:
        fmin_within(600, url, exp_key, objectives.counted, n, max_queue_len=8)
    finally:
        done.set()
        slow.join(10)
    jobs = all_jobs(server, exp_key)
    assert [j["state"] for j in jobs] == [JOB_STATE_DONE] * n
    assert sorted(j["tid"] for j in jobs) == sorted({j["tid"] for j in jobs})
    ran = [line.split()[1] for line in calls.read_text().splitlines()]
    assert len(ran) == n, f"{len(ran)} objective calls for {n} trials"
    assert sorted(ran) == sorted(repr(float(j["misc"]["vals"]["x"][0])) for j in jobs)
    assert len({j["owner"] for j in jobs}) > 1  # the trials were spread over the workers
    for w in started:
        assert "no change streams" not in w.log()
        assert w.stop() == 0
