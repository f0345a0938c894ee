"""Argument checks done before anything starts, so bad input never half-starts a cluster."""

from __future__ import annotations

import math
from collections.abc import Sequence

# MongoDB forbids these in database names (any platform), plus the empty name and > 63 bytes.
_DBNAME_FORBIDDEN = set('/\\. "$*<>:|?\0')


def check_dbname(dbname: str) -> str:
    if not isinstance(dbname, str) or not dbname:
        raise ValueError("dbname must be a non-empty string, e.g. 'hyperopt'")
    bad = sorted(set(dbname) & _DBNAME_FORBIDDEN)
    if bad:
        raise ValueError(f"dbname {dbname!r} contains characters MongoDB forbids: {''.join(bad)!r}")
    if len(dbname.encode()) > 63:
        raise ValueError(f"dbname {dbname!r} is longer than MongoDB's 63 bytes")
    return dbname


def check_worker_count(count: int) -> int:
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"worker_count must be an integer >= 1, got {count!r}")
    return count


def check_poll_interval(interval: float) -> float:
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not math.isfinite(interval):
        raise ValueError(f"worker_poll_intervall must be a number of seconds, got {interval!r}")
    if interval <= 0:
        raise ValueError(f"worker_poll_intervall must be > 0 seconds, got {interval!r}")
    return float(interval)


def _check_port(port: object) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"a port must be an integer from 1 to 65535, got {port!r}")
    return port


def check_ports(ports: int | Sequence[int]) -> int | list[int]:
    """A single port stays an int ("this one or PortInUseError"), a list stays a list ("first free")."""
    if isinstance(ports, int) and not isinstance(ports, bool):
        return _check_port(ports)
    if isinstance(ports, (str, bytes)) or not isinstance(ports, Sequence) or not ports:
        raise ValueError(f"master_port must be a port or a non-empty list of ports, got {ports!r}")
    return [_check_port(p) for p in ports]
