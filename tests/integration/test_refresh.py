"""The driver's incremental refresh (pyhoptcluster.compat.refresh) sees what a full stock refresh sees:
real workers, a real fmin, trials that fail, trials queued by a second driver."""

from __future__ import annotations

import pytest
from hyperopt import fmin, rand
from hyperopt.base import JOB_STATE_DONE, JOB_STATE_NEW
from hyperopt.mongoexp import MongoTrials
from worker_procs import SPACE, objectives, write_config

from pyhoptcluster.compat import refresh

pytestmark = pytest.mark.integration


def snapshot(trials: MongoTrials) -> list[tuple]:
    return [(t["_id"], t["tid"], t["state"], t["version"], str(t["result"])) for t in trials.trials]


def full(url: str, exp_key: str) -> list[tuple]:
    return snapshot(MongoTrials(url, exp_key=exp_key))  # a new object: the stock (full) refresh


def test_incremental_refresh_after_a_distributed_fmin_equals_a_full_one(
    mongo_server_auth, workers, tmp_path, monkeypatch
):
    monkeypatch.setattr(refresh, "FULL_EVERY", 3600.0)  # only the first refresh of an object is full
    server, exp_key = mongo_server_auth, "incremental"
    url = server.trials_url()
    config = write_config(tmp_path / "w.conf", MONGO_URL=url, EXP_KEY=exp_key, POLL_INTERVAL="0.05")
    for name in "ab":
        workers.start(config, name)
    trials = MongoTrials(url, exp_key=exp_key)
    trials.poll_interval_secs = 0.1
    fmin(
        objectives.quadratic,
        SPACE,
        algo=rand.suggest,
        max_evals=40,
        trials=trials,
        max_queue_len=4,
        show_progressbar=False,
    )
    trials.refresh()
    assert trials._pyhc_full_secs is not None and len(trials.trials) == 40
    assert snapshot(trials) == full(url, exp_key)
    assert [t["state"] for t in trials.trials] == [JOB_STATE_DONE] * 40

    # a second driver queues trials of the same experiment that fail (ERROR): seen, then gone
    other = MongoTrials(url, exp_key=exp_key)
    fmin(
        objectives.failing,
        SPACE,
        algo=rand.suggest,
        max_evals=43,
        trials=other,
        max_queue_len=3,
        show_progressbar=False,
        return_argmin=False,
        catch_eval_exceptions=True,
    )
    trials.refresh()
    assert len(trials.trials) == 40 and snapshot(trials) == full(url, exp_key)

    # NEW trials of another driver appear without a full refresh
    queued = MongoTrials(url, exp_key=exp_key)
    ids = queued.new_trial_ids(2)
    docs = queued.new_trial_docs(
        ids,
        [None, None],
        [{"status": "new"}] * 2,
        [{"tid": i, "cmd": None, "workdir": None, "idxs": {"x": [i]}, "vals": {"x": [0.0]}} for i in ids],
    )
    for w in workers.started:
        w.stop()
    queued.insert_trial_docs(docs)
    trials.refresh()
    assert [t["tid"] for t in trials.trials if t["state"] == JOB_STATE_NEW] == ids
    assert snapshot(trials) == full(url, exp_key)
