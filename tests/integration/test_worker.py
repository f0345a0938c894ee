"""pyhoptcluster-worker as real processes against a real SecantusDB server, driven by a real fmin.

The driver side is plain user code: ``import pyhoptcluster`` and hyperopt's own ``MongoTrials``.
Objectives live in ``tests/objectives.py``; workers import it with ``PYTHONPATH=<repo>/tests``.
Each test uses its own exp_key (and sets HYPEROPT_WORKER_EXP_KEY), so tests sharing the
module's server never take each other's jobs.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest
from hyperopt.base import JOB_STATE_DONE, JOB_STATE_ERROR, JOB_STATE_NEW, JOB_STATE_RUNNING
from worker_procs import (
    WORKER_BIN,
    FminThread,
    all_jobs,
    descendants,
    fmin_within,
    objectives,
    proc_text,
    wait_for,
    write_config,
)

import pyhoptcluster  # noqa: F401  (makes MongoTrials work on pymongo 4)

pytestmark = pytest.mark.integration


def test_two_workers_run_fmin_and_never_expose_password(mongo_server_auth, workers, tmp_path):
    server = mongo_server_auth
    url = server.trials_url()
    config = write_config(tmp_path / "worker.conf", MONGO_URL=url, EXP_KEY="two-workers")
    started = [workers.start(config, instance) for instance in ("1", "2")]

    t0 = time.monotonic()
    trials = fmin_within(120, url, "two-workers", objectives.quadratic, 40, max_queue_len=8)
    elapsed = time.monotonic() - t0
    print(f"\n40 trials on 2 workers: {elapsed:.1f} s")

    trials.refresh()
    assert len(trials.trials) == 40
    assert all(t["state"] == JOB_STATE_DONE for t in trials.trials)
    assert all(
        isinstance(t["result"]["loss"], float) and t["result"]["status"] == "ok" for t in trials.trials
    )
    owners = {t["owner"] for t in trials.trials}
    assert owners <= {w.owner for w in started}, owners
    assert len(owners) == 2, "both workers took jobs"
    # each job ran in its worker's own process (in-process isolation)
    assert all(t["result"]["pid"] == int(t["owner"].rsplit(":", 1)[1]) for t in trials.trials)

    secrets = {server.password, urllib.parse.quote(server.password, safe="")}
    for w in started:
        for pid in [w.pid, *descendants(w.pid)]:
            for name in ("cmdline", "environ"):
                assert not any(s in proc_text(pid, name) for s in secrets), f"password in /proc/{pid}/{name}"
    for w in started:
        assert w.stop() == 0
        log = w.log()
        assert "stopped after" in log
        assert not any(s in log for s in secrets), "password in worker log"
        assert f"{server.username}:***@" in log  # the URL is logged, masked


@pytest.mark.parametrize("isolation", ["inprocess", "subprocess"])
def test_sigterm_mid_job_puts_job_back_to_new(mongo_server_auth, workers, tmp_path, isolation):
    server = mongo_server_auth
    url = server.trials_url()
    exp_key = f"sigterm-{isolation}"
    gate = tmp_path / "gate"
    started_file = Path(f"{gate}.started")
    config = write_config(tmp_path / "worker.conf", MONGO_URL=url, EXP_KEY=exp_key, ISOLATION=isolation)
    env = {"PYHOPTCLUSTER_TEST_GATE": str(gate)}
    first = workers.start(config, "1", env)

    driver = FminThread(url, exp_key, objectives.gated, 1)
    driver.start()
    # the objective creates the file, then writes its pid: wait for the line, not just the file
    wait_for(lambda: started_file.exists() and started_file.read_text().strip(), 60, "the objective to start")
    job_pid = int(started_file.read_text().split()[0])
    [job] = all_jobs(server, exp_key)
    assert job["state"] == JOB_STATE_RUNNING and job["owner"] == first.owner
    assert (job_pid == first.pid) == (isolation == "inprocess")

    assert first.stop() == 0
    [job] = all_jobs(server, exp_key)
    assert job["state"] == JOB_STATE_NEW
    assert job["owner"] is None
    assert not proc_text(job_pid, "cmdline") or job_pid == first.pid, "the job's child process is gone"
    assert "put 1 running job(s) back to NEW" in first.log()

    gate.touch()
    second = workers.start(config, "2", env)
    driver.join(timeout=60)
    assert not driver.is_alive() and driver.error is None, driver.error
    [job] = all_jobs(server, exp_key)
    assert job["state"] == JOB_STATE_DONE and job["owner"] == second.owner


def test_subprocess_isolation_runs_each_job_in_its_own_child(mongo_server_auth, workers, tmp_path):
    server = mongo_server_auth
    url = server.trials_url()
    config = write_config(tmp_path / "worker.conf", MONGO_URL=url, EXP_KEY="isolated", ISOLATION="subprocess")
    worker = workers.start(config, "7")
    trials = fmin_within(120, url, "isolated", objectives.quadratic, 6, max_queue_len=3)
    trials.refresh()
    assert [t["state"] for t in trials.trials] == [JOB_STATE_DONE] * 6
    assert {t["owner"] for t in trials.trials} == {worker.owner}
    pids = [t["result"]["pid"] for t in trials.trials]
    assert worker.pid not in pids and len(set(pids)) == 6, pids
    for pid in descendants(worker.pid):  # the fork server holds no secret either
        assert server.password not in proc_text(pid, "cmdline")
    assert worker.stop() == 0


def test_crashing_child_marks_job_error_and_worker_carries_on(mongo_server_auth, workers, tmp_path):
    server = mongo_server_auth
    url = server.trials_url()
    config = write_config(tmp_path / "worker.conf", MONGO_URL=url, EXP_KEY="crash", ISOLATION="subprocess")
    worker = workers.start(config, "1")
    fmin_within(60, url, "crash", objectives.crash, 1)
    [job] = all_jobs(server, "crash")
    assert job["state"] == JOB_STATE_ERROR
    assert "killed by signal 9" in job["error"][1]
    # the worker survived its child and still takes jobs
    trials = fmin_within(60, url, "crash", objectives.quadratic, 2)
    assert trials.count_by_state_unsynced(JOB_STATE_DONE) == 2  # with the new domain, not the cached one
    assert worker.proc.poll() is None
    assert worker.stop() == 0


def test_failing_objective_marks_jobs_error_and_worker_gives_up(mongo_server_auth, workers, tmp_path):
    server = mongo_server_auth
    url = server.trials_url()
    config = write_config(
        tmp_path / "worker.conf", MONGO_URL=url, EXP_KEY="failing", MAX_CONSECUTIVE_FAILURES="2"
    )
    worker = workers.start(config, "1")
    fmin_within(60, url, "failing", objectives.failing, 2, max_queue_len=2)
    jobs = all_jobs(server, "failing")
    assert [j["state"] for j in jobs] == [JOB_STATE_ERROR] * 2
    assert all("on purpose" in j["error"][1] for j in jobs)
    assert worker.proc.wait(timeout=30) == 1
    assert "giving up after 2 consecutive failed jobs" in worker.log()


def test_worker_rides_out_a_server_restart(secantusd, workers, tmp_path):
    password = "p@ss word:/%"  # needs percent-encoding in the URL
    server = secantusd.start(auth_user="pyhoptcluster", auth_password=password)
    url = server.trials_url()
    assert urllib.parse.quote(password, safe="") in url
    # configuration from the environment this time (no --config)
    worker = workers.start(
        None, "3", env={"HYPEROPT_WORKER_MONGO_URL": url, "HYPEROPT_WORKER_EXP_KEY": "restart"}
    )
    wait_for(lambda: "queue empty" in worker.log(), 30, "the worker to connect")

    secantusd.stop(server)
    wait_for(lambda: "unreachable" in worker.log(), 30, "the worker to notice the server is gone")
    server = secantusd.restart(server)

    trials = fmin_within(120, url, "restart", objectives.quadratic, 5, max_queue_len=5)
    trials.refresh()
    assert [t["state"] for t in trials.trials] == [JOB_STATE_DONE] * 5
    assert {t["owner"] for t in trials.trials} == {worker.owner}
    assert worker.proc.poll() is None, "the worker kept running"
    assert worker.stop() == 0
    assert password not in worker.log() and urllib.parse.quote(password, safe="") not in worker.log()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "does not exist"),
        ("HYPEROPT_WORKER_POLL_INTERVAL=0.1\n", "HYPEROPT_WORKER_MONGO_URL is required"),
        (
            "HYPEROPT_WORKER_MONGO_URL=mongo://u:hunter2secret@h:1/db/jobs\nHYPEROPT_WORKER_POLL_INTERVAL=fast\n",
            "HYPEROPT_WORKER_POLL_INTERVAL must be a number",
        ),
    ],
    ids=["missing-file", "no-url", "bad-poll"],
)
def test_bad_config_exits_2_with_a_clear_message(tmp_path, content, expected):
    # the real process and exit code; every other validation rule is in tests/unit/test_worker_config.py
    config = tmp_path / "worker.conf"
    if content is not None:
        write_config(config)
        config.write_text(content)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYPEROPT_WORKER_")}
    proc = subprocess.run(
        [str(WORKER_BIN), "--config", str(config)], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 2, proc.stderr
    assert "configuration error" in proc.stderr and expected in proc.stderr, proc.stderr
    assert "hunter2secret" not in proc.stderr + proc.stdout
