"""Drain workers: let them finish their running trials, reserve no new one, and exit 0.

``pyhoptcluster drain -i INV [--host H] [--timeout S] [--no-wait]``, :meth:`HyperoptCluster.drain`.
Everything goes through the database, no ssh: :func:`request_drain` sets ``drain`` (the server's
clock) on the records (collection ``workers``, :mod:`pyhoptcluster.worker.liveness`) of the live worker
processes — state idle/busy with a fresh heartbeat, the rule of :mod:`pyhoptcluster.control.status` — of
every host or of one inventory host. Each worker's heartbeat thread sees the field in the reply of
its next record write; the worker then completes the trial it runs (a drain never interrupts one),
reserves no other, writes its record with state ``drained`` and exits 0, which neither systemd
(``Restart=on-failure``) nor supervisord (``exitcodes=0,2``) restarts. An idle worker leaves its
wait within about a heartbeat plus 2 s. ``pyhoptcluster up`` / ``start()`` / ``scale`` start the
drained units again as usual.

:func:`wait_drained` then reads the flagged records until each has ended (``drained``, or
``stopped``/``exited`` for one that ended another clean way first), or stopped beating (``gone``:
its process died; the stale-job sweep re-queues a trial it ran), or the timeout passed
(``still_running``: the drain stays requested, so it exits when its trial ends). Worker processes
run with heartbeat 0 write no record and cannot be drained. Control side; needs only pymongo.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

import pymongo

from pyhoptcluster.control.experiments import connect
from pyhoptcluster.control.state import ClusterInfo
from pyhoptcluster.control.status import ALIVE, ENDED, is_alive, placed_from_records
from pyhoptcluster.worker import liveness

POLL_INTERVAL = 0.5  # seconds between two reads of the flagged records while waiting

WorkerId = tuple[str, int | str]  # (inventory host, instance)


@dataclasses.dataclass(frozen=True)
class DrainResult:
    """What a drain did. Each list holds ``(inventory host, instance)`` pairs, sorted."""

    requested: list[WorkerId]  # every live worker process asked to drain (empty: nothing ran)
    drained: list[WorkerId]  # finished its running trial and exited 0 (record state "drained")
    stopped: list[WorkerId]  # ended another clean way meanwhile (a signal, MAX_JOBS): nothing lost
    still_running: list[WorkerId]  # not ended at the timeout (or not waited for): exits after its trial
    gone: list[WorkerId]  # stopped beating during the drain: its process died (may be restarted)
    waited: bool = True  # False: the request was only sent (--no-wait)
    elapsed_s: float = 0.0

    @property
    def nothing_to_drain(self) -> bool:
        return not self.requested

    @property
    def complete(self) -> bool:
        """Every requested worker ended cleanly (drained or stopped)."""
        return self.waited and not self.still_running and not self.gone


@dataclasses.dataclass(frozen=True)
class DrainTarget:
    """One live worker process asked to drain: its record's ``_id`` (the job owner) and names."""

    owner: str
    host: str
    instance: int | str
    tid: Any = None

    @property
    def id(self) -> WorkerId:
        return (self.host, self.instance)


def _host_of(record: Mapping[str, Any]) -> str:
    return str(record.get("inventory_host") or record.get("host"))


def _instance_of(record: Mapping[str, Any]) -> int | str:
    text = str(record.get("instance"))
    return int(text) if text.isdigit() else text


def _sorted(ids: Sequence[WorkerId]) -> list[WorkerId]:
    return sorted(ids, key=lambda i: (i[0], str(i[1]).zfill(8)))


def check_host(host: str | None, known: Sequence[str]) -> None:
    """ValueError unless ``host`` (None: every host) is one of the placement's inventory hosts."""
    if host is None:
        return
    if not isinstance(host, str) or not host:
        raise ValueError(f"host must be an inventory host name, got {host!r}")
    if host not in known:
        names = ", ".join(sorted(known)) or "none: no worker is placed or recorded"
        raise ValueError(f"host {host!r} runs no workers of this cluster; known hosts: {names}")


def check_timeout(timeout: float | None) -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0:
        raise ValueError(f"timeout must be a number of seconds >= 0 or None (no limit), got {timeout!r}")


def request_drain(
    client: pymongo.MongoClient,
    dbname: str,
    placement: Mapping[str, Sequence[int]],
    host: str | None = None,
) -> list[DrainTarget]:
    """Set ``drain`` on the record of every live worker process (of ``host`` only, if given); returns
    them. ``placement`` (host -> worker ids, ClusterInfo.workers; may be empty) names the known hosts."""
    db = client[dbname]
    records = db[liveness.WORKERS_COLLECTION]
    if host is not None and host not in placement:  # also hosts whose workers run but are not published
        check_host(host, sorted(set(placement) | set(placed_from_records(client, dbname))))
    now = liveness.server_now(db)
    targets = [
        DrainTarget(str(r["_id"]), _host_of(r), _instance_of(r), r.get("tid") if r.get("job") else None)
        for r in records.find({"state": {"$in": list(ALIVE)}})
        if is_alive(r, now) and (host is None or _host_of(r) == host)
    ]
    if targets:
        records.update_many(
            {"_id": {"$in": [t.owner for t in targets]}, "drain": {"$exists": False}},
            {"$currentDate": {"drain": True}},
        )
    return sorted(targets, key=lambda t: (t.host, str(t.instance).zfill(8), t.owner))


def wait_drained(
    client: pymongo.MongoClient,
    dbname: str,
    targets: Sequence[DrainTarget],
    timeout: float | None = None,
    on_change: Callable[[WorkerId, str], None] | None = None,
    poll: float = POLL_INTERVAL,
) -> DrainResult:
    """Read the flagged records until each ended or went silent, or ``timeout`` s passed (None: no
    limit). ``on_change(worker, outcome)`` is called as each one is settled."""
    check_timeout(timeout)
    db = client[dbname]
    t0 = time.monotonic()
    pending = {t.owner: t for t in targets}
    outcome: dict[str, list[WorkerId]] = {"drained": [], "stopped": [], "gone": []}

    def settle(owner: str, how: str) -> None:
        target = pending.pop(owner)
        outcome[how].append(target.id)
        if on_change is not None:
            on_change(target.id, how)

    while pending:
        now = liveness.server_now(db)
        seen = {}
        for rec in db[liveness.WORKERS_COLLECTION].find({"_id": {"$in": list(pending)}}):
            seen[str(rec["_id"])] = rec
        for owner in list(pending):
            rec = seen.get(owner)
            state = None if rec is None else rec.get("state")
            if state == "drained":
                settle(owner, "drained")
            elif state in ENDED:
                settle(owner, "stopped")
            elif rec is None or not is_alive(rec, now):
                settle(owner, "gone")
        if not pending:
            break
        left = None if timeout is None else timeout - (time.monotonic() - t0)
        if left is not None and left <= 0:
            break
        time.sleep(poll if left is None else min(poll, left))
    return DrainResult(
        requested=_sorted([t.id for t in targets]),
        drained=_sorted(outcome["drained"]),
        stopped=_sorted(outcome["stopped"]),
        still_running=_sorted([t.id for t in pending.values()]),
        gone=_sorted(outcome["gone"]),
        elapsed_s=time.monotonic() - t0,
    )


def drain_workers(
    client: pymongo.MongoClient,
    dbname: str,
    placement: Mapping[str, Sequence[int]],
    host: str | None = None,
    timeout: float | None = None,
    wait: bool = True,
    stream: IO[str] | None = None,
) -> DrainResult:
    """:func:`request_drain`, then (``wait``) :func:`wait_drained`; ``stream``: progress lines."""
    check_timeout(timeout)
    t0 = time.monotonic()
    targets = request_drain(client, dbname, placement, host)
    ids = _sorted([t.id for t in targets])
    if not targets or not wait:
        return DrainResult(ids, [], [], ids, [], waited=wait)
    settled: list[WorkerId] = []

    def show(worker: WorkerId, how: str) -> None:
        settled.append(worker)
        left, took = len(targets) - len(settled), time.monotonic() - t0
        print(f"[{took:6.1f} s] {_name(worker)}: {how} ({left} left)", file=stream, flush=True)

    if stream is not None:
        busy = sum(t.tid is not None for t in targets)
        plural = "s" if len(targets) != 1 else ""
        print(f"draining {len(targets)} worker{plural} ({busy} running a trial) ...", file=stream, flush=True)
    result = wait_drained(client, dbname, targets, timeout, on_change=show if stream is not None else None)
    if stream is not None:
        word = "done" if result.complete else "incomplete"
        print(f"drain {word} in {time.monotonic() - t0:.1f} s", file=stream, flush=True)
    return result


def drain(
    info: ClusterInfo,
    host: str | None = None,
    timeout: float | None = None,
    wait: bool = True,
    progress: bool = False,
) -> DrainResult:
    """Drain the workers of the cluster ``info`` describes (``HyperoptCluster.attach()``); the whole
    cluster, or inventory host ``host``. ``progress``: one line on stderr per worker as it ends."""
    with connect(info) as client:
        return drain_workers(
            client, info.dbname, info.workers, host, timeout, wait, sys.stderr if progress else None
        )


def _name(worker: WorkerId) -> str:
    return f"{worker[0]} worker {worker[1]}"


def result_lines(result: DrainResult) -> list[str]:
    """What ``pyhoptcluster drain`` prints: one line per worker."""
    if result.nothing_to_drain:
        return ["no running workers to drain"]
    if not result.waited:
        return [f"{_name(w)}: drain requested (exits after its running trial)" for w in result.requested]
    lines = [f"{_name(w)}: drained" for w in result.drained]
    lines += [f"{_name(w)}: ended before draining (stopped or exited)" for w in result.stopped]
    lines += [
        f"{_name(w)}: still running at the timeout; the drain stays requested, it exits after its trial"
        for w in result.still_running
    ]
    lines += [
        f"{_name(w)}: gone (stopped beating: its process died, its trial is re-queued; its service "
        "manager may restart it, then drain again)"
        for w in result.gone
    ]
    return lines
