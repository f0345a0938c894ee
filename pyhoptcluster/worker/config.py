"""Configuration of ``pyhoptcluster-worker``: the ``HYPEROPT_WORKER_*`` keys, read from a KEY=VALUE
file (systemd ``EnvironmentFile`` syntax, mode 0600) or from the environment, validated into a
:class:`WorkerConfig`. The keys and their meaning are listed in :mod:`pyhoptcluster.worker.main`.

Error messages name the file, line and key, never a value that may be the password. This module
is on the worker side: it imports nothing from Ansible or the control side.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import stat
from collections.abc import Mapping
from typing import Any

from hyperopt import mongoexp

from pyhoptcluster import validation
from pyhoptcluster.compat.mongourl import DEFAULT_PORT, client_options, mask_url, parse_url
from pyhoptcluster.validation import check_poll_interval
from pyhoptcluster.worker import liveness

log = logging.getLogger("pyhoptcluster.worker.main")  # one logger for everything the worker logs

PREFIX = "HYPEROPT_WORKER_"
KEYS = {
    "MONGO_URL",
    "POLL_INTERVAL",
    "ISOLATION",
    "EXP_KEY",
    "WORKDIR",
    "MAX_CONSECUTIVE_FAILURES",
    "HEARTBEAT",
    "HEARTBEAT_GRACE",
    "MAX_ATTEMPTS",
    "TRIAL_TIMEOUT",
    "MAX_JOBS",
    "STOP_TIMEOUT",
    "INVENTORY_HOST",
    "GPUS",
    "HOST_INSTANCES",
}
# Seconds a job child gets to end after SIGTERM (STOP_TIMEOUT) are the worker's own stop timeout less
# this margin, in which the worker hands the job back before its service manager kills it.
STOP_MARGIN = 5.0
ISOLATIONS = ("inprocess", "subprocess")
_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ConfigError(Exception):
    """The worker's configuration is missing, unreadable or invalid."""


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    """A validated worker configuration (the password is kept out of ``repr``)."""

    mongo_url: str = dataclasses.field(repr=False)
    poll_interval: float = 0.1
    isolation: str = "inprocess"
    exp_key: str | None = None
    workdir: str | None = None
    max_consecutive_failures: int = 0
    heartbeat: float = liveness.HEARTBEAT
    heartbeat_grace: float = liveness.HEARTBEAT_GRACE
    max_attempts: int = liveness.MAX_ATTEMPTS
    trial_timeout: float = 0.0  # 0 = no limit
    max_jobs: int = 0  # 0 = no limit
    stop_timeout: float = 15.0
    inventory_host: str | None = None  # the host's name in the Ansible inventory (worker records)
    gpus: tuple[str, ...] = ()  # the host's GPUs (HYPEROPT_WORKER_GPUS); instances pinned round robin
    host_instances: tuple[str, ...] = ()  # the instance ids placed on this host, in placement order
    # parsed from mongo_url
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    host: str = "localhost"
    port: int = DEFAULT_PORT
    dbname: str = "hyperopt"

    @property
    def masked_url(self) -> str:
        return mask_url(self.mongo_url)

    @property
    def lease(self) -> liveness.Lease:
        return liveness.Lease(self.heartbeat, self.heartbeat_grace, self.max_attempts)

    def gpu_for(self, instance: str) -> str | None:
        """The CUDA_VISIBLE_DEVICES value of ``instance`` (None: no pinning)."""
        return validation.gpu_of_instance(self.gpus, self.host_instances, instance)

    @property
    def child_stop_timeout(self) -> float:
        """Seconds a job child gets after SIGTERM before it is killed (within the worker's own)."""
        return max(1.0, self.stop_timeout - STOP_MARGIN)


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
        try:  # the facade's and the role's rule (pyhoptcluster.validation): a number of seconds > 0
            poll_interval = check_poll_interval(poll, f"{PREFIX}POLL_INTERVAL", text=True)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None

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

    def rule(check, *args, **kwargs):
        try:
            return check(*args, text=True, **kwargs)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    beat_raw = get("HEARTBEAT") or liveness.HEARTBEAT
    grace_raw = get("HEARTBEAT_GRACE")
    if grace_raw is None:  # default: 60 s, or twice a longer heartbeat
        beat = rule(validation.check_limit, beat_raw, f"{PREFIX}HEARTBEAT")
        grace_raw = max(liveness.HEARTBEAT_GRACE, 2 * beat)
    heartbeat, grace, max_attempts = rule(
        validation.check_lease,
        beat_raw,
        grace_raw,
        get("MAX_ATTEMPTS") or liveness.MAX_ATTEMPTS,
        (f"{PREFIX}HEARTBEAT", f"{PREFIX}HEARTBEAT_GRACE", f"{PREFIX}MAX_ATTEMPTS"),
    )
    trial_timeout = rule(validation.check_limit, get("TRIAL_TIMEOUT") or 0, f"{PREFIX}TRIAL_TIMEOUT")
    max_jobs = int(rule(validation.check_limit, get("MAX_JOBS") or 0, f"{PREFIX}MAX_JOBS", integer=True))
    stop_timeout = rule(validation.check_limit, get("STOP_TIMEOUT") or 15.0, f"{PREFIX}STOP_TIMEOUT")
    if stop_timeout < 1:
        raise ConfigError(
            f"{source}: {PREFIX}STOP_TIMEOUT must be a number of seconds >= 1, got {stop_timeout!r}"
        )

    gpus = tuple(rule(validation.check_gpus, get("GPUS"), f"{PREFIX}GPUS"))
    host_instances = tuple(i.strip() for i in (get("HOST_INSTANCES") or "").split(",") if i.strip())

    return WorkerConfig(
        gpus=gpus,
        host_instances=host_instances,
        heartbeat=heartbeat,
        heartbeat_grace=grace,
        max_attempts=max_attempts,
        trial_timeout=trial_timeout,
        max_jobs=max_jobs,
        stop_timeout=stop_timeout,
        inventory_host=get("INVENTORY_HOST"),
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
        raise ConfigError(f"{bad} (got {mask_url(url)!r})")
    # the stock parser logs every part at INFO; quiet while validating
    mongo_log = logging.getLogger(mongoexp.__name__)
    level = mongo_log.level
    mongo_log.setLevel(logging.WARNING)
    try:
        _, user, password, host, port, dbname, collection, _ = parse_url(url)
        client_options(url)  # a misspelt TLS option must not mean a plaintext connection
    except ValueError as exc:
        raise ConfigError(f"{bad} ({exc})") from None
    finally:
        mongo_log.setLevel(level)
    if not host or not dbname or not collection:
        raise ConfigError(f"{bad} (got {mask_url(url)!r})")
    if user and not password:
        raise ConfigError(f"{bad}: user {user!r} has no password in the URL")
    return {"username": user, "password": password, "host": host, "port": port, "dbname": dbname}


def load_config(path: str | None, environ: Mapping[str, str] | None = None) -> WorkerConfig:
    """From the config file at ``path``, or from ``environ`` (default ``os.environ``) without one."""
    if path is not None:
        return config_from_mapping(read_config_file(path), source=path)
    return config_from_mapping(os.environ if environ is None else environ, source="environment")
