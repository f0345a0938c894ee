"""``subprocess`` isolation: each job runs in a child process forked from a fork server.

The fork server is started once and preloads the worker (hyperopt, pymongo, this package), so a
child starts warm: no interpreter start per job, no password on a command line, and nothing
inherited from the parent's connection (the child opens its own). The child re-reads the job it
was given, runs it with :class:`~pyhoptcluster.worker.jobrunner.JobRunner` and reports through its exit
code; a child that crashes or is killed gets its job recorded as failed by the parent.

This module is on the worker side: it imports nothing from Ansible or the control side.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import sys
import threading
import time
from typing import Any

import pymongo.errors
from hyperopt import mongoexp
from hyperopt.base import JOB_STATE_ERROR, JOB_STATE_RUNNING

from pyhoptcluster.worker.config import WorkerConfig
from pyhoptcluster.worker.jobrunner import JobRunner, StopRequested, connect, timeout_reason
from pyhoptcluster.worker.log_setup import quiet_stock_url_logging, setup_logging

log = logging.getLogger("pyhoptcluster.worker.main")

# child exit codes
# (1 is Python's own exit code for an uncaught exception: treated as a crash)
_CHILD_DONE, _CHILD_FAILED, _CHILD_LOST, _CHILD_RETRY, _CHILD_STOPPED = 0, 10, 11, 12, 75
# what the fork server imports once: the worker's entry module, which pulls in everything a job
# needs (and which each child would otherwise import again as its main module)
_PRELOAD = ["pyhoptcluster.worker.main"]


def _child_main(config: WorkerConfig, owner: str, job_id: Any, log_level: int, instance: str) -> None:
    """Entry point of a per-job child (subprocess isolation)."""

    def on_signal(signum: int, frame: Any) -> None:
        raise StopRequested(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    setup_logging(log_level, [config.password or ""], instance)
    quiet_stock_url_logging(log_level)
    try:
        mj = connect(config)
        try:
            job = mj.jobs.find_one({"_id": job_id, "owner": owner, "state": JOB_STATE_RUNNING})
            if job is None:
                log.warning("job %s is no longer ours; nothing to do", job_id)
                sys.exit(_CHILD_LOST)
            ok = JobRunner(config, owner).execute(mj, job)
        finally:
            mj.conn.close()
    except StopRequested:
        sys.exit(_CHILD_STOPPED)
    except pymongo.errors.PyMongoError as exc:
        log.warning("job %s: server unreachable before the objective ran (%s)", job_id, exc)
        sys.exit(_CHILD_RETRY)
    sys.exit(_CHILD_DONE if ok else _CHILD_FAILED)


class ChildJobRunner:
    """Runs reserved jobs one at a time, each in a child forked from the fork server.

    ``runner`` is the parent's own :class:`JobRunner`, with the same config and owner; it records
    the failure of a job whose child crashed or was killed."""

    def __init__(self, runner: JobRunner, log_level: int, instance: str) -> None:
        self.runner = runner
        self.log_level = log_level
        self.instance = instance
        self._child: multiprocessing.process.BaseProcess | None = None
        self._mp: Any = None

    def execute(
        self, mj: mongoexp.MongoJobs, job: dict[str, Any], lost: threading.Event | None = None
    ) -> bool:
        """Run ``job`` (reserved by us) in a child and wait for it. True if it succeeded.

        The child arms the trial timeout itself; the parent stops a child still running a few
        seconds past it (an objective stuck in C code) and records the job ERROR. A child whose job
        was reclaimed (``lost`` set by the heartbeat) is stopped: its result would be dropped.
        Raises ``AutoReconnect`` when the child could not reach the server before the objective
        ran, so the caller puts the job back to NEW as with an in-process connection failure."""
        if self._mp is None:
            self._mp = multiprocessing.get_context("forkserver")
            # the fork server imports hyperopt and this package once; children start warm
            self._mp.set_forkserver_preload(_PRELOAD)
        child = self._mp.Process(
            target=_child_main,
            args=(self.runner.config, self.runner.owner, job["_id"], self.log_level, self.instance),
            name=f"pyhoptcluster-job-{job['_id']}",
        )
        self._child = child
        child.start()
        limit = self.runner.config.trial_timeout
        deadline = None if not limit else time.monotonic() + limit + 3.0
        while child.is_alive():
            child.join(timeout=0.5)
            if not child.is_alive():
                break
            if lost is not None and lost.is_set():
                log.warning("job %s was reclaimed by another sweeper: stopping its child", job["_id"])
                self._end_child(child)
                self._child = None
                return False
            if deadline is not None and time.monotonic() > deadline:
                log.error("job %s: %s", job["_id"], timeout_reason(limit))
                self._end_child(child)
                self._child = None
                self.runner.finish(
                    mj,
                    job,
                    {
                        "state": JOB_STATE_ERROR,
                        "error": [
                            "<class 'pyhoptcluster.worker.jobrunner.TrialTimeout'>",
                            timeout_reason(limit),
                        ],
                    },
                )
                return False
        self._child = None
        code = child.exitcode
        if code == _CHILD_DONE:
            return True
        if code in (_CHILD_FAILED, _CHILD_LOST):
            return False
        if code == _CHILD_RETRY:
            raise pymongo.errors.AutoReconnect(f"job {job['_id']}: the child could not reach the server")
        reason = f"killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        log.error("job %s: child process %s", job["_id"], reason)
        self.runner.finish(
            mj,
            job,
            {
                "state": JOB_STATE_ERROR,
                "error": ["<class 'ChildProcessError'>", f"worker child process {reason}"],
            },
        )
        return False

    def _end_child(self, child: multiprocessing.process.BaseProcess) -> None:
        """SIGTERM, then SIGKILL after the config's child stop timeout (the worker's own less 5 s)."""
        wait = self.runner.config.child_stop_timeout
        child.terminate()
        child.join(timeout=wait)
        if child.is_alive():
            log.warning("job child %s ignored SIGTERM for %.3g s; killing it", child.pid, wait)
            child.kill()
            child.join(timeout=10)

    def stop(self) -> None:
        """Stop the running child, if any, within the worker's stop timeout (HYPEROPT_WORKER_STOP_TIMEOUT)."""
        child = self._child
        if child is not None and child.is_alive():
            self._end_child(child)
