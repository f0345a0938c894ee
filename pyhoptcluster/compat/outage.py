"""The fmin driver rides out a server outage, and sweeps stale jobs while it waits on workers.

Stock ``MongoTrials`` dies with pymongo's ``ServerSelectionTimeoutError`` 30 s after the server went
away (a crash, a restart by its supervisor, a network blip). :func:`retrying` wraps the driver's
reads and writes (``refresh_tids``, ``count_by_state_unsynced``, ``new_trial_ids``,
``_insert_trial_docs``): on a connection failure it retries with backoff until the server answers
again or :func:`outage_timeout` seconds have passed (``PYHOPTCLUSTER_SERVER_OUTAGE_TIMEOUT``,
default 300), then raises :class:`ServerOutageError` saying what to check. Inserts are made
idempotent (the document's ``_id`` is fixed before the first try), so a retried insert never queues
a trial twice.

``count_by_state_unsynced`` is what fmin's loop calls on every poll; after it answers, the driver
also runs the throttled stale-job sweep of :mod:`pyhoptcluster.worker.liveness`, so trials of dead workers
go back to the queue (or to ERROR) even when no worker is alive. Worker and compatibility side:
imports nothing from Ansible or the control side.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pymongo.errors
from bson import ObjectId

from pyhoptcluster.compat import credentials
from pyhoptcluster.worker import liveness

log = logging.getLogger("pyhoptcluster.compat.driver")

ENV = "PYHOPTCLUSTER_SERVER_OUTAGE_TIMEOUT"
DEFAULT_OUTAGE_TIMEOUT = 300.0
_BACKOFF_START, _BACKOFF_MAX = 0.5, 5.0

F = TypeVar("F", bound=Callable[..., Any])


class ServerOutageError(pymongo.errors.ConnectionFailure):
    """The server did not answer for longer than the outage timeout."""


def outage_timeout() -> float:
    """Seconds the driver keeps retrying through an outage (``$PYHOPTCLUSTER_SERVER_OUTAGE_TIMEOUT``)."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return DEFAULT_OUTAGE_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{ENV} must be a number of seconds >= 0 (0 = do not retry), got {raw!r}")
    return value


def retrying(fn: F, handle: Any = None) -> F:
    """``fn`` retried through connection failures for up to :func:`outage_timeout` seconds.

    An authentication failure of a ``MongoJobs`` handle (``handle``, else the first argument's
    ``.handle``: a ``MongoTrials``) whose password file is known is a rotated password
    (:mod:`.credentials`): the handle is rebuilt with the password the file holds now, and retried
    like an outage until the server takes it."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started: float | None = None
        delay = _BACKOFF_START
        while True:
            try:
                result = fn(*args, **kwargs)
            except ServerOutageError:
                raise
            except (pymongo.errors.ConnectionFailure, pymongo.errors.OperationFailure) as exc:
                if isinstance(exc, pymongo.errors.OperationFailure):
                    target = handle
                    if target is None and args:
                        target = getattr(args[0], "handle", None)
                    if not (credentials.is_auth_error(exc) and credentials.tracks(target)):
                        raise
                    try:
                        if credentials.renew(target):
                            continue
                    except pymongo.errors.PyMongoError as renew_exc:  # the server is not there yet
                        exc = renew_exc
                now = time.monotonic()
                limit = outage_timeout()
                if started is None:
                    started = now
                    if limit:
                        log.warning(
                            "MongoDB server unreachable (%s); retrying for up to %.0f s (%s)", exc, limit, ENV
                        )
                if now - started >= limit:
                    raise ServerOutageError(
                        f"the MongoDB server did not answer for {now - started:.0f} s ({exc}); check that it "
                        f"runs and is reachable (pyhoptcluster up restarts it), or raise {ENV} "
                        f"(now {limit:g} s)"
                    ) from exc
                time.sleep(min(delay, max(0.0, limit - (now - started))))
                delay = min(delay * 2, _BACKOFF_MAX)
                continue
            if started is not None:
                log.warning("MongoDB server answers again after %.1f s", time.monotonic() - started)
            return result

    return wrapper  # type: ignore[return-value]


def insert_once(handle: Any, doc: dict[str, Any]) -> Any:
    """Insert ``doc`` into ``handle.jobs`` (a ``MongoJobs``) through an outage or a password rotation
    without ever inserting it twice; returns its ``_id``."""
    doc.setdefault("_id", ObjectId())

    def attempt() -> Any:
        collection = handle.jobs  # a rotation gives the handle a new client between attempts
        try:
            return collection.insert_one(doc).inserted_id
        except pymongo.errors.DuplicateKeyError as exc:
            # The _id is ours and new: a duplicate of it is an earlier try of ours whose reply was lost
            # (ours, or pymongo's own retryable write inside this try, on a replica set).
            key = (exc.details or {}).get("keyValue") or {}
            if "_id" in key and collection.find_one({"_id": doc["_id"]}, projection=["_id"]) is not None:
                return doc["_id"]
            raise

    return retrying(attempt, handle=handle)()


def with_sweep(count: Callable[..., int]) -> Callable[..., int]:
    """``MongoTrials.count_by_state_unsynced`` that retries, then runs the driver's throttled sweep."""
    counting = retrying(count)

    @functools.wraps(count)
    def count_by_state_unsynced(self: Any, arg: Any) -> int:
        result = counting(self, arg)
        liveness.DRIVER_SWEEPER.maybe_sweep(self.handle.jobs, self._exp_key)
        return result

    return count_by_state_unsynced
