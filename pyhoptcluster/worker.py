"""``pyhoptcluster-worker``: a long-lived worker for hyperopt's Mongo mode (MongoTrials).

Usage: ``pyhoptcluster-worker --config PATH [--instance ID] [--log-level LEVEL]``, also
``python -m pyhoptcluster.worker``. PATH is a KEY=VALUE file (systemd ``EnvironmentFile`` syntax,
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
==========================================  ==================================================

How it works: one process with one connection reserves a job with ``find_one_and_update``
(owner ``<hostname>:<instance>:<pid>``), runs it and writes the result in one update, then
reserves the next; it sleeps the poll interval only when the queue is empty. The objective (the
pickled domain) is loaded once per experiment and reused while the driver's attachment is
unchanged. In ``subprocess`` isolation each job runs in a child forked from a clean, preloaded
fork server (no interpreter start per job, nothing inherited from this process's connection).

Signals: SIGTERM or SIGINT stops the worker; a job it was running is put back to state NEW
(owner None) for another worker, and it exits 0. An unreachable or restarting server is retried
with exponential backoff (0.5 s doubling to 30 s), never a crash loop.

Exit codes: 0 stopped by a signal; 1 gave up after MAX_CONSECUTIVE_FAILURES failed jobs;
2 bad configuration (missing/unreadable config file, missing key, bad value).

The password is never printed: log lines go through a formatter that masks it. This module is
on the worker side: it imports nothing from Ansible or the control side.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import random
import re
import signal
import socket
import stat
import sys
import time
import traceback
import urllib.parse
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

from pyhoptcluster import trials as _trials

_trials.apply()

log = logging.getLogger("pyhoptcluster.worker")

PREFIX = "HYPEROPT_WORKER_"
KEYS = {
    "MONGO_URL",
    "POLL_INTERVAL",
    "ISOLATION",
    "EXP_KEY",
    "WORKDIR",
    "MAX_CONSECUTIVE_FAILURES",
}
ISOLATIONS = ("inprocess", "subprocess")
EXIT_STOPPED, EXIT_GAVE_UP, EXIT_CONFIG = 0, 1, 2
# child exit codes (subprocess isolation)
# (1 is Python's own exit code for an uncaught exception: treated as a crash)
_CHILD_DONE, _CHILD_FAILED, _CHILD_LOST, _CHILD_RETRY, _CHILD_STOPPED = 0, 10, 11, 12, 75

BACKOFF_START, BACKOFF_MAX = 0.5, 30.0
# how long one operation waits for an unreachable server before we back off and log
SERVER_SELECTION_TIMEOUT_MS = 5000
_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ConfigError(Exception):
    """The worker's configuration is missing, unreadable or invalid."""


class _Stop(BaseException):
    """Raised by the signal handler; a BaseException so objectives' ``except Exception`` let it by."""


# --------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    mongo_url: str = dataclasses.field(repr=False)
    poll_interval: float = 0.1
    isolation: str = "inprocess"
    exp_key: str | None = None
    workdir: str | None = None
    max_consecutive_failures: int = 0
    # parsed from mongo_url
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    host: str = "localhost"
    port: int = _trials.DEFAULT_PORT
    dbname: str = "hyperopt"

    @property
    def masked_url(self) -> str:
        return _trials.mask_url(self.mongo_url)


def parse_env_file(text: str, source: str = "config") -> dict[str, str]:
    """Parse systemd ``EnvironmentFile`` syntax: ``KEY=VALUE`` lines, ``#``/``;`` comments, blank
    lines, values optionally in single or double quotes (backslash escapes inside double quotes),
    a trailing backslash continues a line. Error messages name the line, never its value."""
    result: dict[str, str] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        lineno = i + 1
        line = lines[i]
        i += 1
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + lines[i]
            i += 1
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        key, eq, value = stripped.partition("=")
        key = key.strip()
        if not eq or not _KEY_RE.fullmatch(key):
            raise ConfigError(f"{source}, line {lineno}: expected KEY=VALUE")
        result[key] = _unquote_value(value.strip(), f"{source}, line {lineno} ({key})")
    return result


def _unquote_value(value: str, where: str) -> str:
    if len(value) >= 1 and value[0] in "\"'":
        quote = value[0]
        if len(value) < 2 or value[-1] != quote:
            raise ConfigError(f"{where}: unterminated {quote} quote")
        inner = value[1:-1]
        if quote == "'":
            return inner
        return re.sub(r"\\(.)", r"\1", inner)
    return value


def read_config_file(path: str) -> dict[str, str]:
    """The KEY=VALUE pairs of ``path``; :class:`ConfigError` if it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            mode = os.fstat(f.fileno()).st_mode
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise ConfigError(f"cannot read config file {path}: {reason}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "config file %s is accessible by group/others (mode %04o); it holds a password: chmod 600 it",
            path,
            stat.S_IMODE(mode),
        )
    return parse_env_file(text, source=path)


def config_from_mapping(values: Mapping[str, str], source: str = "environment") -> WorkerConfig:
    """Validate the ``HYPEROPT_WORKER_*`` keys of ``values`` into a :class:`WorkerConfig`."""
    for key in values:
        if key.startswith(PREFIX) and key[len(PREFIX) :] not in KEYS:
            log.warning(
                "%s: unknown key %s ignored (known: %s)",
                source,
                key,
                ", ".join(PREFIX + k for k in sorted(KEYS)),
            )

    def get(name: str) -> str | None:
        value = values.get(PREFIX + name)
        return value.strip() if value is not None and value.strip() != "" else None

    url = get("MONGO_URL")
    if url is None:
        raise ConfigError(
            f"{source}: {PREFIX}MONGO_URL is required (mongo://user:password@host:port/dbname/jobs)"
        )
    parsed = _parse_mongo_url(url, source)

    poll = get("POLL_INTERVAL")
    poll_interval = 0.1
    if poll is not None:
        try:
            poll_interval = float(poll)
        except ValueError:
            raise ConfigError(
                f"{source}: {PREFIX}POLL_INTERVAL must be a number of seconds, got {poll!r}"
            ) from None
        if not (poll_interval >= 0 and poll_interval != float("inf")):
            raise ConfigError(f"{source}: {PREFIX}POLL_INTERVAL must be >= 0 seconds, got {poll!r}")

    isolation = (get("ISOLATION") or "inprocess").lower()
    if isolation not in ISOLATIONS:
        raise ConfigError(
            f"{source}: {PREFIX}ISOLATION must be one of {', '.join(ISOLATIONS)}, got {isolation!r}"
        )

    failures = get("MAX_CONSECUTIVE_FAILURES")
    max_failures = 0
    if failures is not None:
        try:
            max_failures = int(failures)
        except ValueError:
            max_failures = -1
        if max_failures < 0:
            raise ConfigError(
                f"{source}: {PREFIX}MAX_CONSECUTIVE_FAILURES must be an integer >= 0 (0 = never give up), "
                f"got {failures!r}"
            )

    return WorkerConfig(
        mongo_url=url,
        poll_interval=poll_interval,
        isolation=isolation,
        exp_key=get("EXP_KEY"),
        workdir=get("WORKDIR"),
        max_consecutive_failures=max_failures,
        **parsed,
    )


def _parse_mongo_url(url: str, source: str) -> dict[str, Any]:
    bad = f"{source}: {PREFIX}MONGO_URL must look like mongo://user:password@host:port/dbname/jobs"
    if not url.startswith(("mongo://", "mongo+ssh://", "ssh+mongo://")):
        raise ConfigError(f"{bad} (got {_trials.mask_url(url)!r})")
    # the stock parser logs every part at INFO; quiet while validating
    mongo_log = logging.getLogger(mongoexp.__name__)
    level = mongo_log.level
    mongo_log.setLevel(logging.WARNING)
    try:
        _, user, password, host, port, dbname, collection, _ = _trials.parse_url(url)
    except ValueError as exc:
        raise ConfigError(f"{bad} ({exc})") from None
    finally:
        mongo_log.setLevel(level)
    if not host or not dbname or not collection:
        raise ConfigError(f"{bad} (got {_trials.mask_url(url)!r})")
    if user and not password:
        raise ConfigError(f"{bad}: user {user!r} has no password in the URL")
    return {"username": user, "password": password, "host": host, "port": port, "dbname": dbname}


def load_config(path: str | None, environ: Mapping[str, str] | None = None) -> WorkerConfig:
    """From the config file at ``path``, or from ``environ`` (default ``os.environ``) without one."""
    if path is not None:
        return config_from_mapping(read_config_file(path), source=path)
    return config_from_mapping(os.environ if environ is None else environ, source="environment")


def make_owner(instance: str, hostname: str | None = None, pid: int | None = None) -> str:
    """The owner written to each reserved job: ``<hostname>:<instance>:<pid>``."""
    return f"{hostname or socket.gethostname()}:{instance}:{os.getpid() if pid is None else pid}"


# --------------------------------------------------------------------------- logging


class MaskingFormatter(logging.Formatter):
    """Formats log records and masks the given secrets (raw and percent-encoded) in the result."""

    def __init__(self, fmt: str, secrets: list[str] = ()) -> None:  # type: ignore[assignment]
        super().__init__(fmt)
        forms: set[str] = set()
        for secret in secrets:
            if secret:
                forms.update({secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)})
        self._secrets = sorted(forms, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return _URL_PASSWORD_RE.sub(r"\1***@", text)


_URL_PASSWORD_RE = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]+:)[^@\s/]+@")


def setup_logging(level: str | int, secrets: list[str], instance: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        MaskingFormatter(
            f"%(asctime)s %(levelname)s worker[{instance}] %(process)d %(name)s: %(message)s", secrets
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


# --------------------------------------------------------------------------- running jobs


def _connect(config: WorkerConfig) -> mongoexp.MongoJobs:
    return _trials.open_jobs(
        config.mongo_url,
        serverSelectionTimeoutMS=SERVER_SELECTION_TIMEOUT_MS,
        connectTimeoutMS=SERVER_SELECTION_TIMEOUT_MS,
        appname="pyhoptcluster-worker",
    )


class _Backoff:
    def __init__(self) -> None:
        self.delay = BACKOFF_START

    def reset(self) -> None:
        self.delay = BACKOFF_START

    def next(self) -> float:
        delay = self.delay * random.uniform(0.8, 1.2)
        self.delay = min(self.delay * 2, BACKOFF_MAX)
        return delay


def _is_auth_error(exc: BaseException) -> bool:
    return isinstance(exc, pymongo.errors.OperationFailure) and (
        exc.code in (13, 18) or "auth" in str(exc).lower()
    )


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
            with _job_dir(self._workdir(job)):
                result = SONify(worker_fn(spec, ctrl))
            attachments = result.pop("attachments", {})
            for name, value in list(attachments.items()):
                log.info("job %s: saving attachment %s (%d bytes)", job["_id"], name, len(value))
                ctrl.attachments[name] = value
        except (_Stop, KeyboardInterrupt):
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
        backoff = _Backoff()
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
            "$inc": {"version": 1},
        },
    )
    return res.modified_count


def _child_main(config: WorkerConfig, owner: str, job_id: Any, log_level: int, instance: str) -> None:
    """Entry point of a per-job child (subprocess isolation)."""

    def on_signal(signum: int, frame: Any) -> None:
        raise _Stop(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    setup_logging(log_level, [config.password or ""], instance)
    if log_level > logging.DEBUG:
        logging.getLogger(mongoexp.__name__).setLevel(logging.WARNING)
    try:
        mj = _connect(config)
        try:
            job = mj.jobs.find_one({"_id": job_id, "owner": owner, "state": JOB_STATE_RUNNING})
            if job is None:
                log.warning("job %s is no longer ours; nothing to do", job_id)
                sys.exit(_CHILD_LOST)
            ok = JobRunner(config, owner).execute(mj, job)
        finally:
            mj.conn.close()
    except _Stop:
        sys.exit(_CHILD_STOPPED)
    except pymongo.errors.PyMongoError as exc:
        log.warning("job %s: server unreachable before the objective ran (%s)", job_id, exc)
        sys.exit(_CHILD_RETRY)
    sys.exit(_CHILD_DONE if ok else _CHILD_FAILED)


# --------------------------------------------------------------------------- the worker loop


class Worker:
    def __init__(self, config: WorkerConfig, instance: str = "0", log_level: int = logging.INFO) -> None:
        self.config = config
        self.instance = instance
        self.owner = make_owner(instance)
        self.log_level = log_level
        self.runner = JobRunner(config, self.owner)
        self.mj: mongoexp.MongoJobs | None = None
        self.stopping = False
        self.jobs_done = 0
        self.jobs_failed = 0
        self._child: multiprocessing.process.BaseProcess | None = None
        self._mp: Any = None

    # -- signals
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.stopping:
            return
        self.stopping = True
        log.info("caught %s: stopping", signal.Signals(signum).name)
        raise _Stop(signum)

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    # -- connection
    def _ensure_connected(self) -> mongoexp.MongoJobs:
        backoff = _Backoff()
        while self.mj is None:
            try:
                self.mj = _connect(self.config)
                log.info("connected to %s as owner %s", self.config.masked_url, self.owner)
            except pymongo.errors.PyMongoError as exc:
                delay = backoff.next()
                if _is_auth_error(exc):
                    log.error(
                        "authentication failed for %s (%s); check %sMONGO_URL; retrying in %.1f s",
                        self.config.masked_url,
                        exc,
                        PREFIX,
                        delay,
                    )
                else:
                    log.warning(
                        "server %s:%s unreachable (%s); retrying in %.1f s",
                        self.config.host,
                        self.config.port,
                        exc,
                        delay,
                    )
                time.sleep(delay)
        return self.mj

    def _reserve(self, mj: mongoexp.MongoJobs) -> dict[str, Any] | None:
        now = coarse_utcnow()
        query: dict[str, Any] = {"owner": None, "state": JOB_STATE_NEW}
        if self.config.exp_key is not None:
            query["exp_key"] = self.config.exp_key
        return mj.jobs.find_one_and_update(
            query,
            {
                "$set": {
                    "owner": self.owner,
                    "book_time": now,
                    "state": JOB_STATE_RUNNING,
                    "refresh_time": now,
                }
            },
            return_document=pymongo.ReturnDocument.AFTER,
        )

    # -- main loop
    def run(self) -> int:
        log.info(
            "starting: owner %s, server %s, isolation %s, poll %.3g s%s",
            self.owner,
            self.config.masked_url,
            self.config.isolation,
            self.config.poll_interval,
            f", exp_key {self.config.exp_key}" if self.config.exp_key else "",
        )
        try:
            return self._loop()
        except _Stop:
            self._shutdown()
            log.info("stopped after %d jobs done, %d failed", self.jobs_done, self.jobs_failed)
            return EXIT_STOPPED
        finally:
            if self.mj is not None:
                self.mj.conn.close()

    def _loop(self) -> int:
        backoff = _Backoff()
        maybe_orphaned = False  # a reservation may have been applied without our seeing the reply
        consecutive_failures = 0
        idle_logged = False
        while True:
            mj = self._ensure_connected()
            try:
                if maybe_orphaned:
                    released = release_jobs(mj, self.owner)
                    if released:
                        log.info("put %d job(s) reserved during a connection failure back to NEW", released)
                    maybe_orphaned = False
                job = self._reserve(mj)
                backoff.reset()
            except pymongo.errors.ConnectionFailure as exc:
                maybe_orphaned = True
                delay = backoff.next()
                log.warning(
                    "server %s:%s unreachable (%s); retrying in %.1f s",
                    self.config.host,
                    self.config.port,
                    exc,
                    delay,
                )
                time.sleep(delay)
                continue
            except pymongo.errors.OperationFailure as exc:
                delay = backoff.next()
                log.error("cannot reserve a job (%s); retrying in %.1f s", exc, delay)
                time.sleep(delay)
                continue
            if job is None:
                if not idle_logged:
                    log.info("queue empty; polling every %.3g s", self.config.poll_interval)
                    idle_logged = True
                time.sleep(self.config.poll_interval)
                continue
            idle_logged = False
            log.debug("reserved job %s (tid %s, exp_key %s)", job["_id"], job.get("tid"), job.get("exp_key"))
            try:
                if self.config.isolation == "subprocess":
                    ok = self._run_in_child(mj, job)
                else:
                    ok = self.runner.execute(mj, job)
            except pymongo.errors.ConnectionFailure as exc:
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
                limit = self.config.max_consecutive_failures
                if limit and consecutive_failures >= limit:
                    log.error(
                        "giving up after %d consecutive failed jobs (%sMAX_CONSECUTIVE_FAILURES=%d)",
                        consecutive_failures,
                        PREFIX,
                        limit,
                    )
                    return EXIT_GAVE_UP

    def _run_in_child(self, mj: mongoexp.MongoJobs, job: dict[str, Any]) -> bool:
        if self._mp is None:
            self._mp = multiprocessing.get_context("forkserver")
            # the fork server imports hyperopt and this package once; children start warm
            self._mp.set_forkserver_preload(["pyhoptcluster.worker"])
        child = self._mp.Process(
            target=_child_main,
            args=(self.config, self.owner, job["_id"], self.log_level, self.instance),
            name=f"pyhoptcluster-job-{job['_id']}",
        )
        self._child = child
        child.start()
        child.join()
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

    def _shutdown(self) -> None:
        child = self._child
        if child is not None and child.is_alive():
            child.terminate()
            child.join(timeout=30)
            if child.is_alive():
                log.warning("job child %s ignored SIGTERM for 30 s; killing it", child.pid)
                child.kill()
                child.join(timeout=10)
        if self.mj is None:
            return
        try:
            released = release_jobs(self.mj, self.owner)
        except pymongo.errors.PyMongoError as exc:
            log.error("could not put running jobs of %s back to NEW (%s); they stay RUNNING", self.owner, exc)
            return
        if released:
            log.info("put %d running job(s) back to NEW", released)


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
    if level > logging.DEBUG:
        # stock parse_url logs every part of the URL at INFO on each connection
        logging.getLogger(mongoexp.__name__).setLevel(logging.WARNING)
    worker = Worker(config, instance=args.instance, log_level=level)
    worker.install_signal_handlers()
    return worker.run()


if __name__ == "__main__":
    # run the importable module's main, so pickled references (the per-job child's target) and
    # exception classes are those of pyhoptcluster.worker, not of __main__
    from pyhoptcluster.worker import main as _main

    sys.exit(_main())
