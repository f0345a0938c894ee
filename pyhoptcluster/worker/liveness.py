"""Liveness in the database: heartbeats on running jobs, worker records, and the stale-job sweep.

A ``pyhoptcluster-worker`` reserves a job with a *lease*: the job gets ``heartbeat`` (the server's
clock, ``$currentDate``), ``heartbeat_grace`` (seconds) and ``max_attempts``. While the job runs, a
thread of the worker (:class:`Heartbeat`) refreshes ``heartbeat`` every few seconds and writes the
worker's own record in the ``workers`` collection (host, instance, pid, state, current job, jobs
done). A RUNNING job whose heartbeat is older than its grace is *stale*: its worker was killed,
hung (SIGSTOP), or its host is gone. :func:`sweep` puts stale jobs back to NEW with ``attempts``
counted on the job, or, after ``max_attempts``, records them ERROR with a readable reason, so
``fmin`` never waits on a dead worker.

The sweep runs in every worker's heartbeat thread and in the fmin driver (``import pyhoptcluster``
hooks it into ``MongoTrials``), so it has no single home to fail and works with no worker alive.
Each reclaim is one ``update_one`` guarded by the job's owner *and* the exact heartbeat
seen: a worker that beats in between, or a second sweeper, makes it match nothing, so a job is
never queued twice. A late result of a worker that was given up on is dropped, because results are
written only while the job is still RUNNING under that worker's owner (``JobRunner.finish``).

Jobs without a ``heartbeat`` field (reserved by stock ``hyperopt-mongo-worker``, which never beats)
are never reclaimed. Times are the server's (``hello``'s ``localTime``), so the hosts' clocks do
not need to agree. Worker and compatibility side: imports nothing from Ansible or the control side.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pymongo
import pymongo.errors
from hyperopt.base import JOB_STATE_ERROR, JOB_STATE_NEW, JOB_STATE_RUNNING

from pyhoptcluster import validation

log = logging.getLogger("pyhoptcluster.worker.liveness")

# Defaults of the lease a worker takes on a job (HYPEROPT_WORKER_HEARTBEAT / _HEARTBEAT_GRACE /
# _MAX_ATTEMPTS; role variables hyperopt_worker_heartbeat / _heartbeat_grace / _max_attempts).
HEARTBEAT = 10.0
HEARTBEAT_GRACE = 60.0
MAX_ATTEMPTS = 3
WORKERS_COLLECTION = "workers"
# The error type recorded on a job given up on after max_attempts.
LOST_ERROR_TYPE = "<class 'pyhoptcluster.worker.liveness.WorkerLost'>"
# How often the fmin driver sweeps (seconds, per MongoTrials connection).
DRIVER_SWEEP_INTERVAL = 5.0


def check_lease(heartbeat: float, grace: float, max_attempts: int) -> None:
    """The one rule for a lease (:func:`pyhoptcluster.validation.check_lease`); ValueError."""
    validation.check_lease(heartbeat, grace, max_attempts)


@dataclasses.dataclass(frozen=True)
class Lease:
    """What a worker promises when it reserves a job: a heartbeat at least every ``grace`` seconds."""

    heartbeat: float = HEARTBEAT  # 0: off (no lease: the job is never reclaimed, as with stock workers)
    grace: float = HEARTBEAT_GRACE
    max_attempts: int = MAX_ATTEMPTS

    def __post_init__(self) -> None:
        check_lease(self.heartbeat, self.grace, self.max_attempts)

    @property
    def on(self) -> bool:
        return self.heartbeat > 0

    def fields(self) -> dict[str, Any]:
        """The ``$set`` part a reservation adds (with ``$currentDate: {heartbeat: true}``)."""
        return {"heartbeat_grace": float(self.grace), "max_attempts": int(self.max_attempts)}


@dataclasses.dataclass(frozen=True)
class Reclaimed:
    """One stale job the sweep handled: back to NEW, or ERROR after its last attempt."""

    job_id: Any
    tid: Any
    exp_key: Any
    owner: str
    silent_for: float
    attempts: int
    state: int  # JOB_STATE_NEW or JOB_STATE_ERROR
    reason: str


def server_now(db: Any) -> datetime.datetime:
    """The server's clock (naive UTC, as pymongo returns datetimes)."""
    now = db.client.admin.command("hello").get("localTime")
    if isinstance(now, datetime.datetime):
        return now.replace(tzinfo=None)
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)  # pragma: no cover - old servers


def owner_name(owner: Any) -> str:
    """``host:instance`` of a ``host:instance:pid`` owner, for messages."""
    text = str(owner[0] if isinstance(owner, list | tuple) and owner else owner)
    parts = text.rsplit(":", 1)
    return parts[0] if len(parts) == 2 and parts[1].isdigit() else text


# NEW jobs one reservation looks at: workers woken by the same event try the others when one is taken
RESERVE_CANDIDATES = 8


def reserve(jobs: Any, owner: str, lease: Lease, exp_key: str | None = None) -> dict[str, Any] | None:
    """Reserve the oldest NEW job for ``owner`` with a lease; None when there is none.

    A compare-and-set: read a few NEW jobs' ids (``state`` and ``exp_key``, the fields of the
    ``(exp_key, state)`` and ``state`` indexes of :mod:`pyhoptcluster.compat.refresh`), then take the
    first whose ``update_one({_id, state: NEW})`` lands; a job another worker took in between is
    simply not modified. Every query here is one SecantusDB answers from an index. Its
    ``findAndModify`` scans the whole collection for the write of the document it matched (it
    re-checks ``{_id, $and: [query]}``, which no index serves), so a single ``find_one_and_update``
    cost O(trials) per reservation: 60 ms at 2,800 trials, and the dispatch rate fell as the
    experiment grew. Stock's extra ``owner: None`` in the filter is left out for the same reason: a
    NEW job has no owner (the driver's insert, a release and a sweep all clear it with the state)."""
    from hyperopt.utils import coarse_utcnow

    query: dict[str, Any] = {"state": JOB_STATE_NEW}
    if exp_key is not None:
        query["exp_key"] = exp_key
    while True:
        ids = [d["_id"] for d in jobs.find(query, projection=["_id"], limit=RESERVE_CANDIDATES)]
        if not ids:
            return None
        now = coarse_utcnow()
        update: dict[str, Any] = {
            "$set": {"owner": owner, "book_time": now, "state": JOB_STATE_RUNNING, "refresh_time": now}
        }
        if lease.on:
            update["$set"].update(lease.fields())
            update["$currentDate"] = {"heartbeat": True}
        for job_id in ids:
            if jobs.update_one({"_id": job_id, "state": JOB_STATE_NEW}, update).modified_count:
                return jobs.find_one({"_id": job_id})
        # every one was taken by another worker meanwhile: look again


def beat(jobs: Any, job_id: Any, owner: str) -> bool:
    """Refresh the heartbeat of a job we run. False if it is no longer ours (it was reclaimed)."""
    res = jobs.update_one(
        {"_id": job_id, "owner": owner, "state": JOB_STATE_RUNNING},
        {"$currentDate": {"heartbeat": True}},
    )
    return res.matched_count > 0


def sweep(jobs: Any, exp_key: Any = None, now: datetime.datetime | None = None) -> list[Reclaimed]:
    """Put stale RUNNING jobs back to NEW (or ERROR after their last attempt). Returns what it did.

    Safe to run from any number of processes at once: each job is reclaimed by exactly one. The
    candidates are read by ``state`` (and ``exp_key``) alone, an index lookup of at most as many jobs as
    there are workers (see :func:`reserve` for why); their heartbeats are compared here, and each
    reclaim is guarded by ``_id``, owner and heartbeat."""
    if now is None:
        now = server_now(jobs.database)
    query: dict[str, Any] = {"state": JOB_STATE_RUNNING}
    if exp_key is not None:
        query["exp_key"] = exp_key
    fields = ["owner", "heartbeat", "heartbeat_grace", "max_attempts", "attempts", "tid", "exp_key"]
    done: list[Reclaimed] = []
    for doc in jobs.find(query, projection=fields):
        beat_at = doc.get("heartbeat")
        if not isinstance(beat_at, datetime.datetime):
            continue
        grace = float(doc.get("heartbeat_grace") or HEARTBEAT_GRACE)
        silent = (now - beat_at.replace(tzinfo=None)).total_seconds()
        if silent <= grace:
            continue
        attempts = int(doc.get("attempts") or 0) + 1
        max_attempts = int(doc.get("max_attempts") or MAX_ATTEMPTS)
        who = owner_name(doc.get("owner"))
        given_up = attempts >= max_attempts
        reason = (
            f"no heartbeat from {who} for {silent:.0f} s, {attempts} attempt{'s' if attempts != 1 else ''}"
        )
        record = {"owner": doc.get("owner"), "at": now, "silent_for": round(silent, 1), "reason": reason}
        update: dict[str, Any] = {
            "$inc": {"attempts": 1, "version": 1},
            "$push": {"reclaims": record},
            "$unset": {"heartbeat": ""},
        }
        if given_up:
            update["$set"] = {
                "state": JOB_STATE_ERROR,
                "error": [LOST_ERROR_TYPE, reason + f" (max_attempts={max_attempts})"],
                "refresh_time": now,
            }
        else:
            update["$set"] = {"state": JOB_STATE_NEW, "owner": None, "book_time": None, "refresh_time": None}
        guard = {
            "_id": doc["_id"],
            "state": JOB_STATE_RUNNING,
            "owner": doc.get("owner"),
            "heartbeat": beat_at,
        }
        if jobs.update_one(guard, update).modified_count:
            item = Reclaimed(
                doc["_id"],
                doc.get("tid"),
                doc.get("exp_key"),
                who,
                silent,
                attempts,
                JOB_STATE_ERROR if given_up else JOB_STATE_NEW,
                reason,
            )
            log.warning(
                "job %s (tid %s): %s; %s",
                item.job_id,
                item.tid,
                reason,
                "recorded as ERROR" if given_up else "put back in the queue",
            )
            done.append(item)
    return done


class DriverSweeper:
    """Throttled :func:`sweep` for the fmin driver: at most once per ``interval`` per connection."""

    def __init__(self, interval: float = DRIVER_SWEEP_INTERVAL) -> None:
        self.interval = interval
        self._last: dict[int, float] = {}
        self._lock = threading.Lock()

    def maybe_sweep(self, jobs: Any, exp_key: Any = None) -> list[Reclaimed]:
        key = id(jobs.database.client)
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -1e9) < self.interval:
                return []
            self._last[key] = now
        try:
            return sweep(jobs, exp_key)
        except pymongo.errors.PyMongoError as exc:  # never break the driver over a sweep
            log.debug("stale-job sweep skipped: %s", exc)
            return []


DRIVER_SWEEPER = DriverSweeper()


class Heartbeat:
    """The worker's heartbeat thread: beats for the current job, writes the worker record, sweeps.

    It uses its own connection (``connect()``), so it keeps beating while the main thread runs an
    objective or waits on a child, and is independent of the main loop's reconnects."""

    def __init__(
        self,
        connect: Callable[[], Any],
        owner: str,
        instance: str,
        lease: Lease,
        exp_key: str | None = None,
        inventory_host: str | None = None,
        gpus: str | None = None,
    ) -> None:
        self._connect = connect
        self.gpus = gpus  # the CUDA_VISIBLE_DEVICES the worker pinned itself to (None: not pinned)
        self.inventory_host = inventory_host
        self.owner = owner
        self.instance = instance
        self.lease = lease
        self.exp_key = exp_key
        self.job: dict[str, Any] | None = None
        self.lost = threading.Event()  # the current job was taken from us
        # the control side asked this process to drain (field ``drain`` on its record, seen at a beat):
        # finish the running job, reserve no other, exit 0 (pyhoptcluster.control.drain)
        self.drain = threading.Event()
        self.jobs_done = 0
        self.jobs_failed = 0
        self.state = "idle"
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._mj: Any = None
        self._warned = False

    # -- called by the main loop
    def start(self) -> None:
        if not self.lease.on:
            return
        self._thread = threading.Thread(target=self._run, name="pyhoptcluster-heartbeat", daemon=True)
        self._thread.start()

    def set_job(self, job: dict[str, Any] | None) -> None:
        """The job the worker runs now (None: idle). Costs nothing: the reservation itself wrote the
        job's first heartbeat, and the record shows it at the next beat."""
        self.job = job
        self.lost.clear()
        self.state = "busy" if job is not None else "idle"

    def stop(self, final_state: str = "stopped") -> None:
        self.state = final_state
        self.job = None
        self._stop.set()
        self._wake.set()
        if self._thread is None:
            return
        self._thread.join(timeout=3)
        try:
            if self._mj is not None:
                with pymongo.timeout(3):  # part of the worker's shutdown, which has a stop timeout
                    self._write_record(self._mj)
        except pymongo.errors.PyMongoError:
            pass
        finally:
            if self._mj is not None:
                self._mj.conn.close()
                self._mj = None

    # -- the thread
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
                self._warned = False
            except pymongo.errors.PyMongoError as exc:  # pymongo reconnects on the next operation
                if not self._warned:
                    log.warning(
                        "heartbeat: server unreachable (%s); retrying every %.3g s", exc, self.lease.heartbeat
                    )
                    self._warned = True
            except Exception:  # never let the heartbeat thread die silently
                log.exception("heartbeat: unexpected error")
            self._wake.wait(self.lease.heartbeat)
            self._wake.clear()

    def tick(self) -> None:
        """One beat: the current job's heartbeat, the worker record, a sweep."""
        if self._mj is None:
            self._mj = self._connect()
        mj = self._mj
        job = self.job
        if job is not None and not self.lost.is_set() and not beat(mj.jobs, job["_id"], self.owner):
            if self.job is job:  # not finished in the meantime: it was reclaimed
                log.warning(
                    "job %s (tid %s) is no longer ours (reclaimed after a missed heartbeat); "
                    "its result will be dropped",
                    job["_id"],
                    job.get("tid"),
                )
                self.lost.set()
        self._write_record(mj)
        sweep(mj.jobs, self.exp_key)

    def _write_record(self, mj: Any) -> None:
        """Write the record; its ``drain`` field comes back in the same round trip."""
        job = self.job
        host = self.owner.rsplit(":", 2)[0] if self.owner.count(":") >= 2 else socket.gethostname()
        record = mj.db[WORKERS_COLLECTION].find_one_and_update(
            {"_id": self.owner},
            {
                "$set": {
                    "host": host,
                    "inventory_host": self.inventory_host or host,
                    "instance": self.instance,
                    "pid": os.getpid(),
                    "state": self.state,
                    "job": None if job is None else job["_id"],
                    "tid": None if job is None else job.get("tid"),
                    "exp_key": None if job is None else job.get("exp_key"),
                    "jobs_done": self.jobs_done,
                    "jobs_failed": self.jobs_failed,
                    "heartbeat_interval": self.lease.heartbeat,
                    "gpus": self.gpus,
                },
                "$currentDate": {"heartbeat": True},
                "$setOnInsert": {"started": datetime.datetime.now(datetime.UTC).replace(tzinfo=None)},
            },
            projection={"drain": 1},
            upsert=True,
            return_document=pymongo.ReturnDocument.AFTER,
        )
        if record and record.get("drain") is not None and not self.drain.is_set():
            if not self._stop.is_set():  # not at the final write of a worker that stops anyway
                log.info("drain requested: finishing the running job, then exiting (reserving no other)")
            self.drain.set()
