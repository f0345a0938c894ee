"""What the cluster is doing, read from the database: no ssh round per question.

The server answers ``ping``, ``buildInfo`` and ``dbStats`` (and ``serverStatus`` for its uptime when
the user may run it); each worker process keeps its record in the
``workers`` collection up to date (:mod:`pyhoptcluster.worker.liveness`); the jobs say how each experiment
goes. :func:`read_status` joins these with the placement the playbooks published (which worker ids
run on which inventory host) into one :class:`ClusterStatus`. Control side; needs only pymongo.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping, Sequence
from typing import Any

import pymongo
import pymongo.errors
from hyperopt.base import JOB_STATE_DONE, JOB_STATE_RUNNING

from pyhoptcluster.worker import liveness

STATE_NAMES = {0: "new", 1: "running", 2: "done", 3: "error", 4: "cancelled"}
# a worker record older than this many heartbeat intervals belongs to a process that is gone
LOST_AFTER_BEATS = 3
# record states a worker sets itself: alive (idle/busy) or ended cleanly (stopped by a signal, exited
# after MAX_JOBS, drained: ended after a drain request, pyhoptcluster.control.drain)
ALIVE, ENDED = ("idle", "busy"), ("stopped", "exited", "drained")


@dataclasses.dataclass(frozen=True)
class ServerStatus:
    address: str
    up: bool
    version: str | None = None
    uptime_s: float | None = None
    data_size: int | None = None  # bytes of the experiment database
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class WorkerStatus:
    host: str  # inventory host
    instance: int
    state: str  # idle, busy, stopped, exited, drained, lost (its process stopped beating), not started
    pid: int | None = None
    uptime_s: float | None = None
    restarts: int = 0  # processes of this instance that died without a clean stop before this one
    current_trial: int | None = None
    exp_key: str | None = None
    trials_done: int = 0
    trials_failed: int = 0
    last_heartbeat_s: float | None = None  # seconds ago
    gpus: str | None = None  # CUDA_VISIBLE_DEVICES of the worker (hyperopt_worker_gpus), None: not pinned


@dataclasses.dataclass(frozen=True)
class ExperimentStatus:
    exp_key: str | None
    trials: dict[str, int]  # by state name
    stale: int  # RUNNING trials whose worker stopped beating (about to be re-queued)
    best_loss: float | None
    trials_per_min: float | None  # DONE trials over the experiment's span so far


@dataclasses.dataclass(frozen=True)
class ClusterStatus:
    server: ServerStatus
    workers: list[WorkerStatus]
    experiments: list[ExperimentStatus]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: keys ``server``, ``workers`` (one per placed worker), ``experiments``."""
        return dataclasses.asdict(self)


def _age(now: datetime.datetime, then: Any) -> float | None:
    if not isinstance(then, datetime.datetime):
        return None
    return max(0.0, (now - then.replace(tzinfo=None)).total_seconds())


def beat_is_fresh(record: Mapping[str, Any], now: datetime.datetime) -> bool:
    """The record's process beat within LOST_AFTER_BEATS of its heartbeat intervals (plus 1 s)."""
    age = _age(now, record.get("heartbeat"))
    interval = float(record.get("heartbeat_interval") or liveness.HEARTBEAT)
    return age is not None and age <= LOST_AFTER_BEATS * interval + 1


def is_alive(record: Mapping[str, Any], now: datetime.datetime) -> bool:
    """The record is of a running worker process: state idle/busy and a fresh heartbeat."""
    return record.get("state") in ALIVE and beat_is_fresh(record, now)


def _worker(
    host: str, instance: int, records: Sequence[Mapping[str, Any]], now: datetime.datetime
) -> WorkerStatus:
    """The status of one placed instance from its records, newest first."""
    if not records:
        return WorkerStatus(host, instance, "not started")
    newest = records[0]
    restarts = 0
    for older in records[1:]:
        if older.get("state") in ENDED:
            break
        restarts += 1
    beat_age = _age(now, newest.get("heartbeat"))
    state = str(newest.get("state") or "unknown")
    if state in ALIVE and not beat_is_fresh(newest, now):
        state = "lost"
    return WorkerStatus(
        host=host,
        instance=instance,
        state=state,
        pid=newest.get("pid"),
        uptime_s=_age(now, newest.get("started")) if state in (*ALIVE, "lost") else None,
        restarts=restarts,
        current_trial=newest.get("tid") if state == "busy" else None,
        exp_key=newest.get("exp_key") if state == "busy" else None,
        trials_done=int(newest.get("jobs_done") or 0),
        trials_failed=int(newest.get("jobs_failed") or 0),
        last_heartbeat_s=beat_age,
        gpus=newest.get("gpus"),
    )


def _experiments(db: Any, now: datetime.datetime) -> list[ExperimentStatus]:
    groups = db.jobs.aggregate(
        [
            {
                "$group": {
                    "_id": {"exp_key": "$exp_key", "state": "$state"},
                    "n": {"$sum": 1},
                    "best": {"$min": "$result.loss"},
                    "first": {"$min": "$book_time"},
                    "last": {"$max": "$refresh_time"},
                }
            }
        ]
    )
    by_key: dict[Any, dict[str, Any]] = {}
    for g in groups:
        key, state = g["_id"].get("exp_key"), g["_id"].get("state")
        entry = by_key.setdefault(key, {"trials": {}, "best": None, "first": None, "last": None, "done": 0})
        entry["trials"][STATE_NAMES.get(state, str(state))] = g["n"]
        if state == JOB_STATE_DONE:
            entry.update(best=g["best"], first=g["first"], last=g["last"], done=g["n"])
    stale: dict[Any, int] = {}
    for job in db.jobs.find(
        {"state": JOB_STATE_RUNNING, "heartbeat": {"$exists": True}},
        projection=["exp_key", "heartbeat", "heartbeat_grace"],
    ):
        age = _age(now, job.get("heartbeat"))
        if age is not None and age > float(job.get("heartbeat_grace") or liveness.HEARTBEAT_GRACE):
            stale[job.get("exp_key")] = stale.get(job.get("exp_key"), 0) + 1
    result = []
    for key, e in by_key.items():
        rate = None
        if (
            e["done"]
            and isinstance(e["first"], datetime.datetime)
            and isinstance(e["last"], datetime.datetime)
        ):
            minutes = (e["last"] - e["first"]).total_seconds() / 60
            rate = e["done"] / minutes if minutes > 0 else None
        best = e["best"]
        result.append(
            ExperimentStatus(
                exp_key=key,
                trials=dict(sorted(e["trials"].items())),
                stale=stale.get(key, 0),
                best_loss=float(best) if isinstance(best, int | float) else None,
                trials_per_min=rate,
            )
        )
    return sorted(result, key=lambda x: str(x.exp_key))


def read_status(
    client: pymongo.MongoClient, dbname: str, placement: Mapping[str, Sequence[int]], address: str
) -> ClusterStatus:
    """The cluster's status from its database; ``placement`` is host -> worker ids (ClusterInfo.workers).

    A server that does not answer gives ``server.up == False`` and no worker or experiment data."""
    try:
        client.admin.command("ping")
        version = client.admin.command("buildInfo").get("version")
        size = client[dbname].command("dbStats").get("dataSize")
    except pymongo.errors.PyMongoError as exc:
        placed = [WorkerStatus(h, int(i), "unknown") for h, ids in placement.items() for i in ids]
        return ClusterStatus(ServerStatus(address, up=False, error=str(exc)), placed, [])
    try:  # needs clusterMonitor, which the experiment user (readWrite on its database) lacks
        uptime = client.admin.command("serverStatus").get("uptime")
    except pymongo.errors.OperationFailure:
        uptime = None
    server = ServerStatus(
        address=address,
        up=True,
        version=str(version) if version else None,
        uptime_s=float(uptime) if isinstance(uptime, int | float) else None,
        data_size=int(size) if isinstance(size, int | float) else None,
    )
    db = client[dbname]
    now = liveness.server_now(db)
    records: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for rec in db[liveness.WORKERS_COLLECTION].find(sort=[("started", pymongo.DESCENDING)]):
        host = str(rec.get("inventory_host") or rec.get("host"))
        records.setdefault((host, str(rec.get("instance"))), []).append(rec)
    workers = [
        _worker(host, int(i), records.get((host, str(i)), []), now)
        for host, ids in placement.items()
        for i in sorted(ids)
    ]
    return ClusterStatus(server, workers, _experiments(db, now))


def placed_from_records(client: pymongo.MongoClient, dbname: str) -> dict[str, list[int]]:
    """host -> instance ids whose newest record is not a clean stop: what runs (or should) now, for a
    cluster attached to without a placement (the records are all the database knows)."""
    newest: dict[tuple[str, str], Mapping[str, Any]] = {}
    for rec in client[dbname][liveness.WORKERS_COLLECTION].find(sort=[("started", pymongo.ASCENDING)]):
        newest[(str(rec.get("inventory_host") or rec.get("host")), str(rec.get("instance")))] = rec
    placed: dict[str, list[int]] = {}
    for (host, instance), rec in sorted(newest.items()):
        if rec.get("state") not in ENDED and instance.isdigit():
            placed.setdefault(host, []).append(int(instance))
    return placed


def read_experiments(client: pymongo.MongoClient, dbname: str) -> list[ExperimentStatus]:
    """Every experiment of the database (exp_key, trials by state, stale, best loss, trials/min)."""
    db = client[dbname]
    return _experiments(db, liveness.server_now(db))
