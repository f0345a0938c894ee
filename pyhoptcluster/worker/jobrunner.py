"""Running reserved jobs: the connection a worker uses, :class:`JobRunner` (one job, start to
recorded outcome), putting a worker's jobs back in the queue, and the retry backoff.

Everything here logs as ``pyhoptcluster.worker.main``. This module is on the worker side: it imports
nothing from Ansible or the control side.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Mapping
from typing import Any

import pymongo
import pymongo.errors
from bson.errors import InvalidDocument
from hyperopt import mongoexp
from hyperopt.base import (
    JOB_STATE_DONE,
    JOB_STATE_ERROR,
    JOB_STATE_NEW,
    JOB_STATE_RUNNING,
    SONify,
    spec_from_misc,
)
from hyperopt.utils import coarse_utcnow

from pyhoptcluster.compat import trials as _trials
from pyhoptcluster.compat.trials import open_jobs
from pyhoptcluster.worker.config import WorkerConfig

_trials.apply()

log = logging.getLogger("pyhoptcluster.worker.main")

BACKOFF_START, BACKOFF_MAX = 0.5, 30.0
# how long one operation waits for an unreachable server before we back off and log
SERVER_SELECTION_TIMEOUT_MS = 5000


class StopRequested(BaseException):
    """Raised by the signal handler; a BaseException so objectives' ``except Exception`` let it by."""


class TrialTimeout(BaseException):
    """A trial ran past ``HYPEROPT_WORKER_TRIAL_TIMEOUT``; a BaseException so objectives let it by."""


def timeout_reason(seconds: float) -> str:
    return (
        f"trial exceeded its wall-clock limit of {seconds:g} s (hyperopt_worker_trial_timeout, "
        f"{PREFIX_TIMEOUT}); it was stopped"
    )


PREFIX_TIMEOUT = "HYPEROPT_WORKER_TRIAL_TIMEOUT"


@contextlib.contextmanager
def trial_alarm(seconds: float) -> Iterator[None]:
    """Raise :class:`TrialTimeout` in this (main) thread after ``seconds``; 0 = no limit.

    Python code is interrupted at once; code inside a C extension that holds the interpreter is
    interrupted when it returns (use subprocess isolation for such objectives: the child is killed)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise TrialTimeout(timeout_reason(seconds))

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def make_owner(instance: str, hostname: str | None = None, pid: int | None = None) -> str:
    """The owner written to each reserved job: ``<hostname>:<instance>:<pid>``."""
    return f"{hostname or socket.gethostname()}:{instance}:{os.getpid() if pid is None else pid}"


def connect(config: WorkerConfig) -> mongoexp.MongoJobs:
    """The worker's ``MongoJobs``: one connection that gives up on an unreachable server quickly."""
    return open_jobs(
        config.mongo_url,
        serverSelectionTimeoutMS=SERVER_SELECTION_TIMEOUT_MS,
        connectTimeoutMS=SERVER_SELECTION_TIMEOUT_MS,
        appname="pyhoptcluster-worker",
    )


class Backoff:
    """Exponential retry delays with jitter: from 0.5 s, doubling up to 30 s."""

    def __init__(self) -> None:
        self.delay = BACKOFF_START

    def reset(self) -> None:
        self.delay = BACKOFF_START

    def next(self) -> float:
        delay = self.delay * random.uniform(0.8, 1.2)
        self.delay = min(self.delay * 2, BACKOFF_MAX)
        return delay


@contextlib.contextmanager
def _job_dir(workdir: str) -> Iterator[None]:
    """Run in ``workdir`` (created if needed), always back in the previous cwd afterwards (hyperopt's
    ``working_dir`` does not restore it when the job raises); a directory we created is removed
    if the job left nothing in it."""
    created = not os.path.exists(workdir)
    os.makedirs(workdir, exist_ok=True)
    previous = os.getcwd()
    os.chdir(workdir)
    try:
        yield
    finally:
        os.chdir(previous)
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(workdir)  # only succeeds when empty


class JobRunner:
    """Runs reserved jobs as stock ``MongoWorker.run_one`` does, with fewer round trips: the
    objective is cached per experiment while the driver's attachment is unchanged, and the result
    is written in one update that only applies while the job is still ours."""

    def __init__(self, config: WorkerConfig, owner: str) -> None:
        self.config = config
        self.owner = owner
        self._trials: dict[Any, mongoexp.MongoTrials] = {}
        self._fns: dict[tuple[Any, str], tuple[Any, Any]] = {}

    def trials_for(self, mj: mongoexp.MongoJobs, exp_key: Any) -> mongoexp.MongoTrials:
        trials = self._trials.get(exp_key)
        if trials is None or trials.handle is not mj:
            trials = self._trials[exp_key] = mongoexp.MongoTrials(mj, exp_key=exp_key, refresh=False)
        return trials

    def _load_fn(self, mj: mongoexp.MongoJobs, job: Mapping[str, Any], ctrl: mongoexp.MongoCtrl) -> Any:
        cmd = job["misc"]["cmd"]
        if cmd[0] != "domain_attachment":
            return _trials.load_worker_fn(job, ctrl)
        exp_key = job.get("exp_key")
        query: dict[str, Any] = {"filename": cmd[1]}
        if exp_key:  # as MongoTrials.attachments: only filtered when the experiment has a key
            query["exp_key"] = exp_key
        grid_out = mj.gfs.find_one(query, sort=[("uploadDate", -1)])
        if grid_out is None:
            raise KeyError(cmd[1])
        cached = self._fns.get((exp_key, cmd[1]))
        if cached is not None and cached[0] == grid_out._id:
            return cached[1]
        domain = mongoexp.pickler.loads(grid_out.read())
        self._fns[(exp_key, cmd[1])] = (grid_out._id, domain.evaluate)
        return domain.evaluate

    def _workdir(self, job: Mapping[str, Any]) -> str:
        if self.config.workdir is None:
            workdir = job["misc"].get("workdir", os.getcwd()) or ""
            workdir = os.path.join(workdir, str(job["_id"]))
        else:
            workdir = self.config.workdir
        return os.path.abspath(os.path.expanduser(workdir))

    def execute(self, mj: mongoexp.MongoJobs, job: dict[str, Any]) -> bool:
        """Run ``job`` (reserved by us) and record the outcome. True if it succeeded.

        A connection failure while loading the objective (before it ran) is not the job's fault:
        it propagates, and the caller puts the job back to NEW once the server answers again."""
        t0 = time.monotonic()
        started = False
        try:
            ctrl = mongoexp.MongoCtrl(
                trials=self.trials_for(mj, job["exp_key"]), read_only=False, current_trial=job
            )
            worker_fn = self._load_fn(mj, job, ctrl)
            spec = spec_from_misc(job["misc"])
            started = True
            with _job_dir(self._workdir(job)), trial_alarm(self.config.trial_timeout):
                result = SONify(worker_fn(spec, ctrl))
            attachments = result.pop("attachments", {})
            for name, value in list(attachments.items()):
                log.info("job %s: saving attachment %s (%d bytes)", job["_id"], name, len(value))
                ctrl.attachments[name] = value
        except (StopRequested, KeyboardInterrupt):
            raise
        except pymongo.errors.ConnectionFailure:
            if not started:
                raise
            self._record_failure(mj, job, t0)
            return False
        except BaseException:  # as stock: anything the objective raises fails the job
            self._record_failure(mj, job, t0)
            return False
        if not self.finish(mj, job, {"state": JOB_STATE_DONE, "result": result}):
            return False
        log.info(
            "job %s (tid %s) done in %.3f s, loss=%s",
            job["_id"],
            job.get("tid"),
            time.monotonic() - t0,
            result.get("loss"),
        )
        return True

    def _record_failure(self, mj: mongoexp.MongoJobs, job: Mapping[str, Any], t0: float) -> None:
        """Log the exception being handled and record it on the job as stock does (state ERROR)."""
        exc = sys.exc_info()[1]
        log.error(
            "job %s (tid %s) failed after %.2f s:\n%s",
            job["_id"],
            job.get("tid"),
            time.monotonic() - t0,
            traceback.format_exc().rstrip(),
        )
        self.finish(mj, job, {"state": JOB_STATE_ERROR, "error": [str(type(exc)), str(exc)]})

    def finish(self, mj: mongoexp.MongoJobs, job: Mapping[str, Any], fields: dict[str, Any]) -> bool:
        """Write the outcome, retrying through connection failures; only while the job is ours.

        A result the server refuses (too large, invalid keys...) is recorded as an error instead.
        Returns True if ``fields`` were recorded as given."""
        query = {"_id": job["_id"], "owner": self.owner, "state": JOB_STATE_RUNNING}
        backoff = Backoff()
        as_given = True
        while True:
            update = {"$set": {**fields, "refresh_time": coarse_utcnow()}, "$inc": {"version": 1}}
            try:
                res = mj.jobs.update_one(query, update)
                break
            except pymongo.errors.ConnectionFailure as exc:
                delay = backoff.next()
                log.warning("cannot record job %s (%s); retrying in %.1f s", job["_id"], exc, delay)
                time.sleep(delay)
            except (pymongo.errors.PyMongoError, InvalidDocument) as exc:
                if fields.get("state") == JOB_STATE_ERROR:
                    log.error("cannot record the failure of job %s: %s", job["_id"], exc)
                    return False
                log.error("cannot store the result of job %s (%s); recording it as failed", job["_id"], exc)
                fields = {
                    "state": JOB_STATE_ERROR,
                    "error": [str(type(exc)), f"cannot store the result: {exc}"],
                }
                as_given = False
        if res.matched_count == 0:
            log.warning(
                "job %s is no longer ours (state or owner changed); its outcome was dropped", job["_id"]
            )
            return False
        return as_given


def release_jobs(mj: mongoexp.MongoJobs, owner: str) -> int:
    """Put every job ``owner`` holds in state RUNNING back to NEW (owner None). Returns the count."""
    res = mj.jobs.update_many(
        {"owner": owner, "state": JOB_STATE_RUNNING},
        {
            "$set": {"state": JOB_STATE_NEW, "owner": None, "book_time": None, "refresh_time": None},
            "$unset": {"heartbeat": ""},
            "$inc": {"version": 1},
        },
    )
    return res.modified_count
