"""Push before poll: wait for a change of the jobs collection instead of asking again and again.

An idle worker that polls every 0.1 s costs the single server 10 reservations a second; N idle
workers load it N times that, which is why throughput fell as workers were added. Where the server
has change streams (a replica set, SecantusDB's default mode, or MongoDB run as a one-node replica
set), :class:`ChangeWaiter` waits on one instead, and wakes within milliseconds of the event:

* a worker waits for a job to become NEW (queued, or put back by a sweep): :func:`queued` — about
  one request every :data:`AWAIT_MS` ms while idle, plus a reservation every
  :data:`SAFETY_EVERY` s in case an event was missed;
* the fmin driver waits for a trial of its experiment to finish, so it queues the
  next one at once instead of after its 1 s poll: :func:`finished` (see :mod:`pyhoptcluster.compat.driver`).

Correctness never depends on the push path: a server without change streams (a standalone
``mongod``, ``secantusd --standalone``) answers the first ``watch`` with an error and the waiter falls
back to sleeping the poll interval, for good. Worker and compatibility side: no Ansible imports.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pymongo.errors
from hyperopt.base import JOB_STATE_DONE, JOB_STATE_ERROR, JOB_STATE_NEW

log = logging.getLogger("pyhoptcluster.worker.main")

AWAIT_MS = 5000  # how long one getMore of the change stream waits on the server
SAFETY_EVERY = 10.0  # an idle waiter returns (so its owner asks again) at least this often


def queued(exp_key: str | None) -> list[dict[str, Any]]:
    """Change-stream pipeline: a job (of ``exp_key``) was queued, or put back to NEW."""
    insert: dict[str, Any] = {"operationType": "insert", "fullDocument.state": JOB_STATE_NEW}
    if exp_key is not None:
        insert["fullDocument.exp_key"] = exp_key
    return [{"$match": {"$or": [insert, {"updateDescription.updatedFields.state": JOB_STATE_NEW}]}}]


def finished() -> list[dict[str, Any]]:
    """Change-stream pipeline: a job finished (DONE or ERROR), or went back to NEW."""
    states = [JOB_STATE_DONE, JOB_STATE_ERROR, JOB_STATE_NEW]
    return [{"$match": {"updateDescription.updatedFields.state": {"$in": states}}}]


class ChangeWaiter:
    """Waits up to a timeout for a matching change of ``collection()``; polls where it cannot push."""

    def __init__(
        self,
        collection: Callable[[], Any],
        pipeline: list[dict[str, Any]],
        poll: float,
        await_ms: int = AWAIT_MS,
    ) -> None:
        """``await_ms``: how long one server round waits for an event, so a :meth:`wait` returns at
        most that much after its timeout."""
        self._collection = collection
        self._pipeline = pipeline
        self.poll = poll
        self.await_ms = max(10, int(await_ms))
        self.push: bool | None = None  # None: not tried yet; False: the server has no change streams
        self._stream: Any = None

    @property
    def armed(self) -> bool:
        return self._stream is not None

    def arm(self) -> bool:
        """Open the stream now (before looking for work), so nothing that happens after is missed.
        False when the server has no change streams (then :meth:`wait` sleeps the poll interval)."""
        if self.push is False:
            return False
        if self._stream is None:
            try:
                self._stream = self._collection().watch(self._pipeline, max_await_time_ms=self.await_ms)
            except pymongo.errors.OperationFailure as exc:
                self.push = False
                log.info("the server has no change streams (%s); polling every %.3g s", exc, self.poll)
                return False
            except pymongo.errors.PyMongoError:
                return False  # unreachable now: the caller's next operation handles it
            self.push = True
        return True

    def wait(self, timeout: float = SAFETY_EVERY, until: Callable[[], bool] | None = None) -> bool:
        """Block until a matching change (True), or ``timeout`` passed / polling (False). ``until``:
        also return (False) once it says True, checked before the poll sleep and between server
        rounds (each at most ``await_ms``), e.g. a drain request seen by the heartbeat thread."""
        if until is not None and until():
            return False
        if self._stream is None and not self.arm():
            time.sleep(self.poll if self.push is False else min(self.poll, timeout))
            return False
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if until is not None and until():
                    return False
                if self._stream.try_next() is not None:
                    return True
        except pymongo.errors.PyMongoError as exc:
            log.debug("change stream closed (%s); opening it again", exc)
            self.close()
            time.sleep(min(self.poll, timeout))
        return False

    def close(self) -> None:
        """Close the stream (when busy: the events while busy do not matter)."""
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close()
            except pymongo.errors.PyMongoError:
                pass
