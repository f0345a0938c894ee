"""The cluster's logs in one place: ``pyhoptcluster logs`` and ``HyperoptCluster.logs()``.

``playbooks/logs.yml`` reads, on every host of the cluster, the server's and the workers' recent log
lines with their times (the journal on systemd hosts, the supervisord log files elsewhere: the
collection's ``log_read`` module) and publishes them as ``hyperopt_logs``. This module merges them
into one time-ordered list of :class:`LogLine`, each tagged with its inventory host and source
(``server`` or ``worker[N]``); :func:`follow` repeats the read from the newest time seen and yields
only the lines not shown yet. Control side.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from pyhoptcluster.control import runner
from pyhoptcluster.control.inventory import InventorySpec, normalize
from pyhoptcluster.errors import PlaybookError

STATS_KEY = "hyperopt_logs"
NOTICE = "pyhoptcluster"  # the source of a line this module adds (a host that did not answer)
DEFAULT_LINES = 200
FOLLOW_INTERVAL = 2.0  # seconds between two reads of --follow (each is one playbook run)
_SINCE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclasses.dataclass(frozen=True, order=True)
class LogLine:
    """One log line of the cluster: when, where (inventory host), which process, what."""

    time: float  # seconds since the epoch
    host: str
    source: str  # "server" or "worker"
    instance: int | None  # the worker instance (None for the server)
    text: str

    @property
    def tag(self) -> str:
        """``server`` or ``worker[N]``."""
        return self.source if self.instance is None else f"{self.source}[{self.instance}]"

    def __str__(self) -> str:
        stamp = datetime.datetime.fromtimestamp(self.time).isoformat(sep=" ", timespec="milliseconds")
        return f"{stamp} {self.host} {self.tag}: {self.text}"


def parse_since(value: str | float | datetime.datetime | None, now: float | None = None) -> float | None:
    """``--since``: a duration back from now (``90s``, ``10m``, ``2h``, ``1d``), a date and time
    (ISO 8601, local time unless it has an offset), a datetime or epoch seconds; None: no limit."""
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    if isinstance(value, int | float):
        return float(value)
    m = _SINCE_RE.match(value)
    if m:
        return (time.time() if now is None else now) - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        return datetime.datetime.fromisoformat(value.strip()).timestamp()
    except ValueError:
        raise ValueError(
            f"since={value!r} is neither a duration (90s, 10m, 2h, 1d) nor a date and time "
            "(2026-12-03 09:30 or 2026-12-03T09:30:00+00:00)"
        ) from None


def merge(published: Mapping[str, Any]) -> list[LogLine]:
    """The lines of ``hyperopt_logs`` ({host: [[time, tag, instance, text], ...]}), oldest first;
    lines of one source keep their order."""
    lines: list[LogLine] = []
    for host, records in published.items():
        for record in records or []:
            stamp, tag, instance, text = record
            number = None if instance is None else int(instance)
            lines.append(LogLine(float(stamp), str(host), str(tag), number, str(text)))
    lines.sort(key=lambda line: line.time)  # stable: same-time lines of a source keep their order
    return lines


def read_logs(
    inventory: InventorySpec,
    extravars: Mapping[str, Any] | None = None,
    *,
    host: str | None = None,
    instance: int | None = None,
    since: str | float | datetime.datetime | None = None,
    lines: int = DEFAULT_LINES,
) -> list[LogLine]:
    """The recent log lines of the server and every worker (or of ``host`` / worker ``instance``
    only), at most ``lines`` per log, merged oldest first. Read-only (``playbooks/logs.yml``)."""
    if lines < 1:
        raise ValueError(f"lines={lines} must be at least 1")
    if instance is not None and instance < 1:
        raise ValueError(f"instance={instance} must be a worker instance id (1, 2, ...)")
    spec = normalize(inventory)
    variables: dict[str, Any] = {**dict(extravars or {}), "hyperopt_logs_lines": int(lines)}
    start = parse_since(since)
    if start is not None:
        variables["hyperopt_logs_since"] = start
    if instance is not None:
        variables["hyperopt_logs_instance"] = int(instance)
    if host is not None:
        variables["hyperopt_logs_host"] = host
    run = runner.run_playbook("logs.yml", spec, variables)
    published = run.stats.get(STATS_KEY)
    if not isinstance(published, Mapping):
        run.raise_for_failure()
        raise PlaybookError(f"logs.yml published no '{STATS_KEY}' result")
    found = merge(published)
    for failure in run.failures:  # an unreachable host: say so in the view, in time order
        found.append(LogLine(time.time(), failure.host, NOTICE, None, f"no log lines: {failure}"))
    return found


def follow(
    read: Callable[[float | None], list[LogLine]],
    since: float | None = None,
    interval: float = FOLLOW_INTERVAL,
    stop: Callable[[], bool] = lambda: False,
) -> Iterator[LogLine]:
    """Yield the lines ``read(since)`` returns, then, every ``interval`` s, the ones that are new:
    each read starts at the newest time seen (inclusive), and lines already yielded are dropped."""
    seen: set[LogLine] = set()
    first = True
    while True:
        # a host that did not answer is said once, not on every read
        batch = [line for line in read(since) if line not in seen and (first or line.source != NOTICE)]
        first = False
        yield from batch
        if batch:
            newest = max(line.time for line in batch)
            # keep only what a read from `newest` on can return again
            seen = {line for line in seen | set(batch) if line.time >= newest}
            since = newest
        if stop():
            return
        time.sleep(interval)
