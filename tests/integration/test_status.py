"""The cluster's status read from the database (pyhoptcluster.control.status): real workers, a real fmin."""

from __future__ import annotations

import signal

import pytest
from hyperopt.base import JOB_STATE_DONE
from worker_procs import all_jobs, fmin_within, objectives, wait_for, write_config

from pyhoptcluster.control.status import read_status
from pyhoptcluster.worker import liveness

pytestmark = pytest.mark.integration

LEASE = {"HEARTBEAT": "0.5", "HEARTBEAT_GRACE": "2", "POLL_INTERVAL": "0.05", "INVENTORY_HOST": "node-a"}


def test_status_names_each_placed_worker_its_trials_restarts_and_each_experiment(
    mongo_server_auth, workers, tmp_path
):
    server, exp_key = mongo_server_auth, "status"
    url = server.trials_url()
    config = write_config(tmp_path / "w.conf", MONGO_URL=url, EXP_KEY=exp_key, **LEASE)
    first = workers.start(config, "1")
    second = workers.start(config, "2")
    fmin_within(60, url, exp_key, objectives.quadratic, 10, max_queue_len=4)
    placement = {"node-a": [1, 2, 3]}
    with server.client() as client:
        wait_for(
            lambda: (
                sum(
                    r.get("jobs_done", 0)
                    for r in client[server.dbname][liveness.WORKERS_COLLECTION].find(
                        {"exp_key": {"$exists": True}, "_id": {"$in": [first.owner, second.owner]}}
                    )
                )
                == 10
            ),
            10,
            "the records to count every trial",
        )
        status = read_status(client, server.dbname, placement, "127.0.0.1:1")
        assert status.server.up and status.server.version and status.server.data_size > 0
        by_id = {w.instance: w for w in status.workers}
        assert [w.host for w in status.workers] == ["node-a"] * 3
        assert by_id[1].state == by_id[2].state == "idle"
        assert by_id[1].trials_done + by_id[2].trials_done == 10
        assert by_id[1].pid == first.pid and by_id[1].restarts == 0
        assert by_id[3].state == "not started"
        (exp,) = [e for e in status.experiments if e.exp_key == exp_key]
        assert exp.trials == {"done": 10} and exp.stale == 0
        best = min(j["result"]["loss"] for j in all_jobs(server, exp_key) if j["state"] == JOB_STATE_DONE)
        assert exp.best_loss == pytest.approx(best) and exp.trials_per_min > 0

        first.stop(signal.SIGKILL)  # a crash: its record is never marked stopped
        wait_for(
            lambda: (
                next(
                    w for w in read_status(client, server.dbname, placement, "x").workers if w.instance == 1
                ).state
                == "lost"
            ),
            30,
            "the killed worker to be seen as lost",
        )
        again = workers.start(config, "1")  # what its supervisor does
        worker = wait_for(
            lambda: next(
                (
                    w
                    for w in read_status(client, server.dbname, placement, "x").workers
                    if w.instance == 1 and w.pid == again.pid
                ),
                None,
            ),
            60,
            "the restarted worker's record",
        )
        assert worker.state == "idle" and worker.restarts == 1
        assert second.stop() == 0
        stopped = next(
            w for w in read_status(client, server.dbname, placement, "x").workers if w.instance == 2
        )
        assert stopped.state == "stopped" and stopped.uptime_s is None


def test_status_of_a_server_that_does_not_answer_says_so(tmp_path):
    import pymongo
    from worker_procs import REPO  # noqa: F401  (the helpers' import sets sys.path for objectives)

    client = pymongo.MongoClient("127.0.0.1", 9, serverSelectionTimeoutMS=300)
    status = read_status(client, "hyperopt", {"h": [1]}, "127.0.0.1:9")
    assert not status.server.up and status.server.error
    assert [(w.host, w.instance, w.state) for w in status.workers] == [("h", 1, "unknown")]
    assert set(status.to_dict()) == {"server", "workers", "experiments"}


def test_attach_cache_is_used_only_while_its_server_answers_as_the_user(
    mongo_server_auth, tmp_path, monkeypatch
):
    from pyhoptcluster.control import attach_cache
    from pyhoptcluster.control.state import ClusterInfo

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    server = mongo_server_auth
    secret = tmp_path / "mongodb.password"
    secret.write_text(server.password + "\n")
    info = ClusterInfo(
        server.host, server.port, server.dbname, server.username, str(secret), True, "supervisor"
    )
    inventory = {"all": {"children": {"hyperopt_workers": {"hosts": {"node-a": {}}}}}}
    assert attach_cache.recall(inventory, {}) is None  # nothing remembered yet
    attach_cache.remember(inventory, {}, info)
    (stored,) = (tmp_path / "cache" / "pyhoptcluster" / "attach").glob("*.json")
    assert stored.stat().st_mode & 0o777 == 0o600 and server.password not in stored.read_text()
    assert attach_cache.recall(inventory, {}) == info
    # another inventory or other extra vars: not this entry
    assert attach_cache.recall({"all": {"children": {}}}, {}) is None
    assert attach_cache.recall(inventory, {"hyperopt_mongodb_dbname": "other"}) is None
    # the password changed (a rotated or another cluster's server on that port): not used
    secret.write_text("not-the-password\n")
    assert attach_cache.recall(inventory, {}) is None
    secret.write_text(server.password + "\n")
    # nothing answers at the remembered address any more: not used
    gone = ClusterInfo("127.0.0.1", 9, "hyperopt", None, None, False, "supervisor")
    attach_cache.remember(inventory, {}, gone)
    assert attach_cache.recall(inventory, {}) is None
