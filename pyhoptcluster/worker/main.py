"""``pyhoptcluster-worker``: a long-lived worker for hyperopt's Mongo mode (MongoTrials).

Usage: ``pyhoptcluster-worker --config PATH [--instance ID] [--log-level LEVEL]``, also
``python -m pyhoptcluster.worker.main``. PATH is a KEY=VALUE file (systemd ``EnvironmentFile`` syntax,
mode 0600); without ``--config`` the same keys are read from the environment:

==========================================  ==================================================
``HYPEROPT_WORKER_MONGO_URL`` (required)    ``mongo://user:password@host:port/dbname/jobs``
                                            (user and password percent-encoded)
``HYPEROPT_WORKER_POLL_INTERVAL``           seconds to sleep after finding the queue empty
                                            (default 0.1)
``HYPEROPT_WORKER_ISOLATION``               ``inprocess`` (default: the objective runs in this
                                            process) or ``subprocess`` (a child process per job)
``HYPEROPT_WORKER_EXP_KEY``                 only take jobs of this experiment
``HYPEROPT_WORKER_WORKDIR``                 directory jobs run in (default: as stock, the
                                            driver's workdir or the cwd, plus ``/<job id>``)
``HYPEROPT_WORKER_MAX_CONSECUTIVE_FAILURES``  give up after N failed jobs in a row (default 0 =
                                            never)
``HYPEROPT_WORKER_HEARTBEAT``               seconds between heartbeats on the running job and
                                            the worker record (default 10; 0 = off: its jobs
                                            are never reclaimed, as with stock workers)
``HYPEROPT_WORKER_HEARTBEAT_GRACE``         a job silent this long is reclaimed by any sweeper
                                            (default 60; at least twice the heartbeat)
``HYPEROPT_WORKER_MAX_ATTEMPTS``            a job reclaimed this many times becomes ERROR
                                            (default 3)
``HYPEROPT_WORKER_TRIAL_TIMEOUT``           wall-clock limit of one trial in seconds; past it
                                            the trial is stopped and recorded ERROR (default 0
                                            = no limit)
``HYPEROPT_WORKER_MAX_JOBS``                exit 0 after this many jobs (default 0 = no limit)
``HYPEROPT_WORKER_INVENTORY_HOST``          the host's name in the Ansible inventory, kept in
                                            the worker record (default: the hostname)
``HYPEROPT_WORKER_STOP_TIMEOUT``            seconds the worker has to stop after SIGTERM, as its
                                            service manager grants it (default 15); a job child
                                            gets 5 s less, so its job is handed back in time
``HYPEROPT_WORKER_GPUS``                    the host's GPUs, comma-separated device ids ("0,1";
                                            a count "2" means 0,1): the worker sets
                                            ``CUDA_VISIBLE_DEVICES`` to one of them at start
``HYPEROPT_WORKER_HOST_INSTANCES``          the instance ids placed on this host, in placement
                                            order: the k-th gets GPU k mod len(GPUS)
==========================================  ==================================================

How it works: one process with one connection reserves a job with a compare-and-set update
(owner ``<hostname>:<instance>:<pid>``, plus a lease: see :mod:`pyhoptcluster.worker.liveness`), runs it
and writes the result in one update, then reserves the next; a heartbeat thread refreshes the
running job, writes the worker's record (collection ``workers``) and reclaims stale jobs of dead
workers; it sleeps the poll interval only when the queue is empty. The objective (the
pickled domain) is loaded once per experiment and reused while the driver's attachment is
unchanged. In ``subprocess`` isolation each job runs in a child forked from a clean, preloaded
fork server (no interpreter start per job, nothing inherited from this process's connection).

Signals: SIGTERM or SIGINT stops the worker; a job it was running is put back to state NEW
(owner None) for another worker, and it exits 0. An unreachable or restarting server is retried
with exponential backoff (0.5 s doubling to 30 s), never a crash loop.

Drain: when the control side sets ``drain`` on the worker's record (``pyhoptcluster drain``), the
heartbeat sees it at its next beat; the worker finishes the job it runs, reserves no other, writes
its record with state ``drained`` and exits 0 (see :mod:`pyhoptcluster.worker.liveness`).

Exit codes: 0 stopped by a signal, drained, or MAX_JOBS done (not restarted); 1 gave up after
MAX_CONSECUTIVE_FAILURES failed jobs; 2 bad configuration (missing/unreadable config file,
missing key, bad value).

The password is never printed: log lines go through a formatter that masks it. This module is
on the worker side: it imports nothing from Ansible or the control side. It holds the job loop
and the command line; the configuration is in :mod:`pyhoptcluster.worker.config`, running one job
in :mod:`pyhoptcluster.worker.jobrunner`, the fork server in :mod:`pyhoptcluster.worker.isolation` and the
masking formatter in :mod:`pyhoptcluster.worker.log_setup`.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import time
from typing import Any

import pymongo
import pymongo.errors
from hyperopt import mongoexp

from pyhoptcluster.compat.wakeup import ChangeWaiter, queued
from pyhoptcluster.worker import liveness
from pyhoptcluster.worker.config import PREFIX, ConfigError, WorkerConfig, load_config, read_config_file
from pyhoptcluster.worker.isolation import ChildJobRunner
from pyhoptcluster.worker.jobrunner import (
    Backoff,
    JobRunner,
    StopRequested,
    connect,
    make_owner,
    release_jobs,
)
from pyhoptcluster.worker.log_setup import MaskingFormatter, quiet_stock_url_logging, setup_logging

# The worker's public names; the configuration and logging ones are re-exported from their modules.
__all__ = [
    "EXIT_CONFIG",
    "EXIT_GAVE_UP",
    "EXIT_STOPPED",
    "ConfigError",
    "MaskingFormatter",
    "Worker",
    "WorkerConfig",
    "build_parser",
    "load_config",
    "main",
    "make_owner",
    "read_config_file",
]

log = logging.getLogger("pyhoptcluster.worker.main")

EXIT_STOPPED, EXIT_GAVE_UP, EXIT_CONFIG = 0, 1, 2
# seconds each database call of the shutdown (handing jobs back, the last record) may take
SHUTDOWN_OP_TIMEOUT = 3.0
# longest wait between two tries of a refused password (one authentication per worker and 2 s at most)
AUTH_RETRY_MAX = 2.0


def _is_auth_error(exc: BaseException) -> bool:
    return isinstance(exc, pymongo.errors.OperationFailure) and (
        exc.code in (13, 18) or "auth" in str(exc).lower()
    )


# --------------------------------------------------------------------------- the worker loop


class Worker:
    """The job loop: reserve a job, run it (in this process or a child), record it, repeat."""

    def __init__(self, config: WorkerConfig, instance: str = "0", log_level: int = logging.INFO) -> None:
        self.config = config
        self.instance = instance
        self.owner = make_owner(instance)
        self.log_level = log_level
        self.runner = JobRunner(config, self.owner)
        self.children = (
            ChildJobRunner(self.runner, log_level, instance) if config.isolation == "subprocess" else None
        )
        self.heartbeat = liveness.Heartbeat(
            lambda: connect(config),
            self.owner,
            instance,
            config.lease,
            config.exp_key,
            config.inventory_host,
            gpus=config.gpu_for(instance),
        )
        self.mj: mongoexp.MongoJobs | None = None
        # idle: wait on a change stream of queued jobs (push), else poll (pyhoptcluster.compat.wakeup)
        self.waiter = ChangeWaiter(
            lambda: self._ensure_connected().jobs, queued(config.exp_key), config.poll_interval
        )
        self.stopping = False
        self.drained = False
        self.jobs_done = 0
        self.jobs_failed = 0

    # -- signals
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.stopping:
            return
        self.stopping = True
        log.info("caught %s: stopping", signal.Signals(signum).name)
        raise StopRequested(signum)

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    # -- connection
    def _ensure_connected(self) -> mongoexp.MongoJobs:
        backoff = Backoff()
        while self.mj is None:
            try:
                self.mj = connect(self.config)
                log.info("connected to %s as owner %s", self.config.masked_url, self.owner)
            except pymongo.errors.PyMongoError as exc:
                delay = backoff.next()
                if _is_auth_error(exc):
                    # a password rotation gives the workers the new password before the server takes
                    # it (playbooks/rotate.yml): retry soon, not after the connection backoff's 30 s
                    delay = min(delay, AUTH_RETRY_MAX)
                    backoff.delay = min(backoff.delay, AUTH_RETRY_MAX)  # nor when the server restarts next
                    log.error(
                        "authentication failed for %s (%s); check %sMONGO_URL; retrying in %.1f s",
                        self.config.masked_url,
                        exc,
                        PREFIX,
                        delay,
                    )
                    time.sleep(delay)
                else:
                    self._wait_unreachable(exc, delay)
        return self.mj

    def _wait_unreachable(self, exc: Exception, delay: float) -> None:
        host, port = self.config.host, self.config.port
        log.warning("server %s:%s unreachable (%s); retrying in %.1f s", host, port, exc, delay)
        time.sleep(delay)

    def _reserve(self, mj: mongoexp.MongoJobs) -> dict[str, Any] | None:
        return liveness.reserve(mj.jobs, self.owner, self.config.lease, self.config.exp_key)

    # -- main loop
    def run(self) -> int:
        cfg = self.config
        log.info(
            "starting: owner %s, server %s, isolation %s, poll %.3g s, heartbeat %.3g s (grace %.3g s)%s%s%s",
            self.owner,
            cfg.masked_url,
            cfg.isolation,
            cfg.poll_interval,
            cfg.heartbeat,
            cfg.heartbeat_grace,
            f", exp_key {cfg.exp_key}" if cfg.exp_key else "",
            f", trial timeout {cfg.trial_timeout:.3g} s" if cfg.trial_timeout else "",
            f", max {cfg.max_jobs} jobs" if cfg.max_jobs else "",
        )
        self.heartbeat.start()
        try:
            code = self._loop()
            self.heartbeat.stop("drained" if self.drained else "exited")
            return code
        except StopRequested:
            self._shutdown()
            self.heartbeat.stop("stopped")
            log.info("stopped after %d jobs done, %d failed", self.jobs_done, self.jobs_failed)
            return EXIT_STOPPED
        finally:
            self.waiter.close()
            if self.mj is not None:
                self.mj.conn.close()

    def _loop(self) -> int:
        backoff = Backoff()
        maybe_orphaned = False  # a reservation may have been applied without our seeing the reply
        consecutive_failures = 0
        idle_logged = False
        while True:
            if self.stopping:  # the handler's StopRequested was swallowed somewhere (e.g. in a __del__)
                raise StopRequested(signal.SIGTERM)
            mj = self._ensure_connected()
            try:
                if maybe_orphaned:
                    released = release_jobs(mj, self.owner)
                    if released:
                        log.info("put %d job(s) reserved during a connection failure back to NEW", released)
                    maybe_orphaned = False
                if self.heartbeat.drain.is_set():  # checked only here: a running job always completes
                    log.info("drain requested: finished %d jobs, exiting", self.jobs_done + self.jobs_failed)
                    self.drained = True
                    return EXIT_STOPPED
                job = self._reserve(mj)
                backoff.reset()
            except pymongo.errors.ConnectionFailure as exc:
                maybe_orphaned = True
                delay = backoff.next()
                self._wait_unreachable(exc, delay)
                continue
            except pymongo.errors.OperationFailure as exc:
                delay = backoff.next()
                log.error("cannot reserve a job (%s); retrying in %.1f s", exc, delay)
                time.sleep(delay)
                continue
            if job is None:
                if not idle_logged:
                    log.info(
                        "queue empty; waiting for a job (change stream, else polling every %.3g s)",
                        self.config.poll_interval,
                    )
                    idle_logged = True
                # open the change stream, then reserve again at once: nothing queued meanwhile is missed
                if not self.waiter.armed and self.waiter.push is not False and self.waiter.arm():
                    continue
                # a job queued (push), the poll interval (no change streams), or a drain request
                self.waiter.wait(until=self.heartbeat.drain.is_set)
                continue
            idle_logged = False
            self.waiter.close()  # busy: the events until we are idle again do not matter
            log.debug("reserved job %s (tid %s, exp_key %s)", job["_id"], job.get("tid"), job.get("exp_key"))
            self.heartbeat.set_job(job)
            try:
                if self.children is not None:
                    ok = self.children.execute(mj, job, lost=self.heartbeat.lost)
                else:
                    ok = self.runner.execute(mj, job)
            except pymongo.errors.ConnectionFailure as exc:
                self.heartbeat.set_job(None)
                maybe_orphaned = True  # the job goes back to NEW as soon as the server answers
                delay = backoff.next()
                log.warning("lost the server before job %s ran (%s); retry in %.1f s", job["_id"], exc, delay)
                time.sleep(delay)
                continue
            if ok:
                self.jobs_done += 1
                consecutive_failures = 0
            else:
                self.jobs_failed += 1
                consecutive_failures += 1
            self.heartbeat.jobs_done, self.heartbeat.jobs_failed = self.jobs_done, self.jobs_failed
            self.heartbeat.set_job(None)
            if self.config.max_jobs and self.jobs_done + self.jobs_failed >= self.config.max_jobs:
                log.info(
                    "finished %d jobs (%sMAX_JOBS=%d): exiting",
                    self.jobs_done + self.jobs_failed,
                    PREFIX,
                    self.config.max_jobs,
                )
                return EXIT_STOPPED
            if not ok:
                limit = self.config.max_consecutive_failures
                if limit and consecutive_failures >= limit:
                    log.error(
                        "giving up after %d consecutive failed jobs (%sMAX_CONSECUTIVE_FAILURES=%d)",
                        consecutive_failures,
                        PREFIX,
                        limit,
                    )
                    return EXIT_GAVE_UP

    def _shutdown(self) -> None:
        if self.children is not None:
            self.children.stop()
        if self.mj is None:
            return
        try:
            # bounded: the whole shutdown must fit in the service manager's stop timeout
            with pymongo.timeout(SHUTDOWN_OP_TIMEOUT):
                released = release_jobs(self.mj, self.owner)
        except pymongo.errors.PyMongoError as exc:
            log.error("could not put running jobs of %s back to NEW (%s); they stay RUNNING", self.owner, exc)
            return
        if released:
            log.info("put %d running job(s) back to NEW", released)


def pin_gpu(config: WorkerConfig, instance: str) -> str | None:
    """Pin this worker to its GPU (``CUDA_VISIBLE_DEVICES``), before any objective, fork server or job
    child exists, so all of them see only that device. Without ``GPUS`` the environment is left alone."""
    device = config.gpu_for(instance)
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device
        log.info("pinned to GPU %s (CUDA_VISIBLE_DEVICES) of %s", device, ",".join(config.gpus))
    return device


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyhoptcluster-worker",
        description="Run hyperopt MongoTrials jobs until stopped by SIGTERM/SIGINT.",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help=f"KEY=VALUE file with the {PREFIX}* keys (default: read them from the environment)",
    )
    parser.add_argument(
        "--instance", default="0", metavar="ID", help="worker instance id, part of the job owner"
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = getattr(logging, args.log_level)
    if not re.fullmatch(r"[A-Za-z0-9_.@-]+", args.instance):
        setup_logging(level, [], args.instance)
        log.error("--instance must be letters, digits, '_', '.', '@' or '-', got %r", args.instance)
        return EXIT_CONFIG
    setup_logging(level, [], args.instance)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return EXIT_CONFIG
    if args.config is None:
        os.environ.pop(PREFIX + "MONGO_URL", None)  # not for the objective's or its children's eyes
    setup_logging(level, [config.password or ""], args.instance)
    quiet_stock_url_logging(level)
    pin_gpu(config, args.instance)
    worker = Worker(config, instance=args.instance, log_level=level)
    worker.install_signal_handlers()
    return worker.run()


if __name__ == "__main__":
    # run the importable module's main, so the worker's objects exist once, as those of
    # pyhoptcluster.worker.main (which the fork server preloads), not a second time in __main__
    from pyhoptcluster.worker.main import main as _main

    sys.exit(_main())
