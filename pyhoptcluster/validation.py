"""The input rules of pyhoptcluster, each written once: dbname, ports, worker count (with the per-host
caps and weights), poll interval, the workers' lease (heartbeat, grace, attempts) and limits.

Every way in uses this module: the facade and the CLI call it before Ansible starts, the roles call
it through the collection's ``pyhoptcluster.cluster.input_problems`` and ``round_robin`` filters
(``plugins/module_utils/rules.py`` loads this file), and the worker's config parser uses it on the
worker hosts. So it imports only the standard library: no Ansible, nothing of the control side, and
not even the package's ``__init__`` is needed to use it.

Each ``check_*`` returns the normalized value or raises ``ValueError`` with a message that names the
setting (``name``, so a role says ``hyperopt_mongodb_dbname`` and the facade ``dbname``) and what to
do. ``text=True`` also accepts the strings Ansible's ``-e key=value`` and config files give.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from fractions import Fraction

# MongoDB forbids these in database names (any platform), plus the empty name and > 63 bytes.
_DBNAME_FORBIDDEN = set('/\\. "$*<>:|?\0')
MAX_DBNAME_BYTES = 63
# Most workers one host runs (each is a Python process with hyperopt loaded, ~100 MB); a worker
# count beyond MAX_WORKERS_PER_HOST x worker hosts is refused before anything starts.
MAX_WORKERS_PER_HOST = 256


def _show(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]}...{text[-1]}"


def check_dbname(dbname: object, name: str = "dbname") -> str:
    if not isinstance(dbname, str) or not dbname:
        raise ValueError(f"{name} must be a non-empty string, e.g. 'hyperopt', got {_show(dbname)}")
    bad = sorted(set(dbname) & _DBNAME_FORBIDDEN)
    if bad:
        raise ValueError(
            f"{name} {_show(dbname)} contains characters MongoDB forbids in database names: {''.join(bad)!r}"
        )
    size = len(dbname.encode())
    if size > MAX_DBNAME_BYTES:
        raise ValueError(
            f"{name} {_show(dbname)} is {size} bytes long, MongoDB allows at most {MAX_DBNAME_BYTES} "
            "bytes in a database name: choose a shorter one"
        )
    return dbname


def _as_int(value: object, text: bool) -> int | None:
    """An int (never a bool), or with ``text`` also an integral float or a string of digits."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if text and isinstance(value, float) and value.is_integer():
        return int(value)
    if text and isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def check_worker_count(count: object, name: str = "worker_count", *, text: bool = False) -> int:
    value = _as_int(count, text)
    if value is None or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {_show(count)}")
    return value


def check_poll_interval(
    interval: object, name: str = "worker_poll_intervall", *, text: bool = False
) -> float:
    """Seconds an idle worker waits before it asks for a job again: a finite number > 0 (0 would make
    every idle worker a busy loop of findAndModify calls against the server)."""
    value: float | None = None
    if isinstance(interval, (int, float)) and not isinstance(interval, bool):
        value = float(interval)
    elif text and isinstance(interval, str):
        try:
            value = float(interval.strip())
        except ValueError:
            value = None
    if value is None or not math.isfinite(value):
        raise ValueError(f"{name} must be a number of seconds, got {_show(interval)}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0 seconds, e.g. 0.1, got {_show(interval)}")
    return value


def _as_seconds(value: object, text: bool) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if text and isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def check_lease(
    heartbeat: object,
    grace: object,
    max_attempts: object,
    names: tuple[str, str, str] = ("heartbeat", "heartbeat_grace", "max_attempts"),
    *,
    text: bool = False,
) -> tuple[float, float, int]:
    """The lease a worker takes on a job: a heartbeat every ``heartbeat`` s (0: off), reclaimed after
    ``grace`` s of silence (at least twice the heartbeat, or a busy worker is taken for dead), ERROR
    after ``max_attempts`` reclaims (an integer >= 1)."""
    beat, silence, attempts = (
        _as_seconds(heartbeat, text),
        _as_seconds(grace, text),
        _as_int(max_attempts, text),
    )
    if beat is None or not math.isfinite(beat) or beat < 0:
        raise ValueError(f"{names[0]} must be a number of seconds >= 0 (0 = off), got {_show(heartbeat)}")
    if silence is None or not math.isfinite(silence) or (beat and silence < 2 * beat):
        raise ValueError(
            f"{names[1]} ({_show(grace)}) must be a number of seconds at least twice {names[0]} "
            f"({_show(heartbeat)}), or a busy worker would be taken for dead"
        )
    if attempts is None or attempts < 1:
        raise ValueError(f"{names[2]} must be an integer >= 1, got {_show(max_attempts)}")
    return beat, silence, attempts


def check_limit(value: object, name: str, *, integer: bool = False, text: bool = False) -> float:
    """A limit where 0 means none (trial timeout in seconds, max jobs): a finite number >= 0."""
    number: float | None = (
        (None if (v := _as_int(value, text)) is None else float(v)) if integer else _as_seconds(value, text)
    )
    if number is None or not math.isfinite(number) or number < 0:
        kind = "an integer" if integer else "a number of seconds"
        raise ValueError(f"{name} must be {kind} >= 0 (0 = no limit), got {_show(value)}")
    return number


def _check_port(port: object, name: str, text: bool) -> int:
    value = _as_int(port, text)
    if value is None or not 1 <= value <= 65535:
        raise ValueError(f"{name}: a port must be an integer from 1 to 65535, got {_show(port)}")
    return value


def check_ports(ports: object, name: str = "master_port", *, text: bool = False) -> int | list[int]:
    """A single port stays an int ("this one or PortInUseError"), a list stays a list ("first free").
    With ``text`` (Ansible) the result is always a list, and "27017,27018" is a list of two."""
    if text and isinstance(ports, str) and "," in ports:
        ports = ports.split(",")
    if not isinstance(ports, Sequence) or isinstance(ports, (str, bytes)):
        if isinstance(ports, (str, bytes)) and not text:
            raise ValueError(f"{name} must be a port or a non-empty list of ports, got {_show(ports)}")
        port = _check_port(ports, name, text)
        return [port] if text else port
    if not ports:
        raise ValueError(f"{name} must be a port or a non-empty list of ports, got {_show(ports)}")
    return [_check_port(p, name, text) for p in ports]


# -- the worker count on the worker hosts: caps (hyperopt_worker_max) and weights ---------------------


def _unset(value: object) -> bool:
    return value is None or (isinstance(value, str) and value.strip() in ("", "None", "null"))


def check_worker_cap(host: str, value: object) -> int | None:
    """None (only the MAX_WORKERS_PER_HOST limit) or an int from 0 to MAX_WORKERS_PER_HOST."""
    if _unset(value):
        return None
    number = _as_int(value, text=True)
    if number is None or number < 0:
        raise ValueError(
            f"hyperopt_worker_max of {host} must be an integer >= 0 (or unset for no cap), got {_show(value)}"
        )
    if number > MAX_WORKERS_PER_HOST:
        raise ValueError(
            f"hyperopt_worker_max of {host} is {number}, more than the {MAX_WORKERS_PER_HOST} workers a host "
            f"may run; set at most {MAX_WORKERS_PER_HOST} (or leave it unset)"
        )
    return number


def check_worker_weight(host: str, value: object) -> Fraction:
    """A Fraction > 0 (exact, so ties between hosts are broken the same way on every run)."""
    if _unset(value):
        return Fraction(1)
    weight = Fraction(0)
    if not isinstance(value, bool):
        try:
            weight = Fraction(str(value).strip())
        except (ValueError, ZeroDivisionError):
            pass
    if weight <= 0:
        raise ValueError(f"hyperopt_worker_weight of {host} must be a number > 0, got {_show(value)}")
    return weight


def _per_host(values: object, hosts: list[str], name: str, check) -> dict:
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ValueError(f"{name} must be a dict of host name to value, got {_show(values)}")
    return {h: check(h, values.get(h)) for h in hosts}


def check_placement(
    hosts: object,
    count: object,
    caps: object = None,
    weights: object = None,
    name: str = "hyperopt_worker_count",
) -> tuple[list[str], int, dict[str, int], dict[str, Fraction]]:
    """The cross-host rule of the worker count: ``count`` workers fit on ``hosts``, where a host runs
    at most its cap or MAX_WORKERS_PER_HOST. Returns (hosts, count, cap of each host, weight of each)."""
    if isinstance(hosts, (str, bytes)) or not isinstance(hosts, Sequence):
        raise ValueError(f"expected a list of worker host names, got {_show(hosts)}")
    hosts = [str(h) for h in hosts]
    if not hosts:
        raise ValueError("no hosts to place workers on (is the worker group empty?)")
    if len(set(hosts)) != len(hosts):
        raise ValueError(f"a host is listed twice: {hosts}")
    n = check_worker_count(count, name, text=True)
    given = _per_host(caps, hosts, "caps", check_worker_cap)
    weight = _per_host(weights, hosts, "weights", check_worker_weight)
    cap = {h: MAX_WORKERS_PER_HOST if c is None else c for h, c in given.items()}
    room = sum(cap.values())
    if n > room:
        capped = [f"{h}={c}" for h, c in given.items() if c is not None]
        where = [f"their hyperopt_worker_max caps are {', '.join(capped)}"] if capped else []
        if len(capped) < len(hosts):
            where.append(
                f"a host{' without a cap' if capped else ''} runs at most {MAX_WORKERS_PER_HOST} workers"
                " (pyhoptcluster's per-host limit)"
            )
        hints = f"ask for at most {room} workers, {'raise a cap, ' if capped else ''}or add worker hosts"
        raise ValueError(
            f"{n} workers do not fit on the {len(hosts)} worker host{'s' if len(hosts) > 1 else ''}: "
            f"{'; '.join(where)}, {room} in all; {hints}"
        )
    return hosts, n, cap, weight


# -- GPU pinning (hyperopt_worker_gpus, HYPEROPT_WORKER_GPUS) ------------------------------------------

# A device as CUDA_VISIBLE_DEVICES takes it: an index (0, 1, ...) or a UUID such as GPU-8f0e... / MIG-...
_GPU_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_/")


def _gpu_id(item: object, name: str) -> str:
    if isinstance(item, bool):
        raise ValueError(f"{name}: a device must be an index >= 0 or a device UUID, got {_show(item)}")
    if isinstance(item, int):
        if item < 0:
            raise ValueError(f"{name}: a device index must be >= 0, got {_show(item)}")
        return str(item)
    text = item.strip() if isinstance(item, str) else ""
    if not text or not text[0].isalnum() or not set(text) <= _GPU_ID_CHARS:
        raise ValueError(
            f"{name}: a device must be an index >= 0 or a device UUID (letters, digits, '-'), "
            f"got {_show(item)}"
        )
    return text


def check_gpus(value: object, name: str = "hyperopt_worker_gpus", *, text: bool = False) -> list[str]:
    """The GPUs of a worker host, as the CUDA_VISIBLE_DEVICES ids its instances are pinned to round
    robin: a count ``N`` (devices 0..N-1), a list of device ids (indexes or UUIDs), or none (``None``,
    0, ``[]``: no pinning). With ``text`` a string is a count ("2") or a comma list ("0,2", "3,")."""
    if _unset(value):
        return []
    if isinstance(value, str):
        if not text:
            raise ValueError(f"{name} must be a count of GPUs or a list of device ids, got {_show(value)}")
        stripped = value.strip()
        if "," not in stripped:
            value = int(stripped) if stripped.isdigit() else [stripped]
        else:
            value = [part for part in stripped.split(",") if part.strip()]
    if isinstance(value, bool) or not isinstance(value, int | Sequence):
        raise ValueError(f"{name} must be a count of GPUs or a list of device ids, got {_show(value)}")
    if isinstance(value, int):
        if value < 0 or value > MAX_WORKERS_PER_HOST:
            raise ValueError(f"{name}: a count of GPUs must be from 0 to {MAX_WORKERS_PER_HOST}, got {value}")
        return [str(i) for i in range(value)]
    devices = [_gpu_id(item, name) for item in value]
    if len(set(devices)) != len(devices):
        raise ValueError(f"{name}: a device is listed twice: {_show(value)}")
    return devices


def gpu_config_value(value: object, name: str = "hyperopt_worker_gpus") -> str:
    """The HYPEROPT_WORKER_GPUS line's value for a role variable: the device ids joined by commas,
    with a trailing comma for a single device ("3,"), so it never reads back as a count."""
    devices = check_gpus(value, name, text=True)
    return ",".join(devices) + ("," if len(devices) == 1 else "")


def gpu_of_instance(devices: Sequence[str], host_instances: Sequence[str], instance: str) -> str | None:
    """The device of ``instance``: the k-th instance placed on its host (``host_instances``, in
    placement order) gets ``devices[k % len(devices)]``; an instance not in the list (started by
    hand) counts by its id. None without devices."""
    if not devices:
        return None
    ids = [str(i) for i in host_instances]
    if str(instance) in ids:
        k = ids.index(str(instance))
    else:
        k = int(instance) - 1 if str(instance).isdigit() and int(instance) > 0 else 0
    return devices[k % len(devices)]
