"""The fmin driver's refresh at a cost that does not grow with the experiment.

Stock ``MongoTrials.refresh()`` re-reads the ``_id`` and ``version`` of every trial of the
experiment on each poll of the driver, then downloads the changed ones: O(n) per poll (at 30k trials
one refresh took 4 s, hyperopt #300). A finished trial (DONE) does not change again, so after a first
full refresh :func:`refresh_tids` asks only for

* the trials it still holds as NEW or RUNNING, and those this trials object inserted since (by
  ``_id``, an index lookup), and
* the experiment's NEW and RUNNING trials (an index on ``(exp_key, state)``), which brings in trials
  another driver queued.

A trial that disappears from the first set without showing up again became ERROR (stock refresh
leaves those out) or was deleted. Every ``FULL_EVERY`` seconds, and whenever ``tids`` are given, the
stock refresh runs as before, so anything else that changed (another driver's finished trials,
deletions) is picked up within that time. Counting by state (``count_by_state_unsynced``, 3 calls per
poll) uses the same compound index. Worker and compatibility side: imports no Ansible code.
"""

from __future__ import annotations

import time
from typing import Any

import pymongo
from hyperopt import mongoexp
from hyperopt.base import JOB_STATE_ERROR, JOB_STATE_NEW, JOB_STATE_RUNNING

# seconds between full (stock) refreshes of one trials object; raised to keep them under ~2 % of the
# time when a full refresh itself is slow (large experiments)
FULL_EVERY = 30.0
_FULL_SHARE = 50
_UNFINISHED = (JOB_STATE_NEW, JOB_STATE_RUNNING)
STATE_INDEX = [("exp_key", pymongo.ASCENDING), ("state", pymongo.ASCENDING)]

_stock_refresh_tids = mongoexp.MongoTrials.refresh_tids
_stock_create_jobs_indexes = mongoexp.MongoJobs.create_jobs_indexes


def create_jobs_indexes(self: Any) -> None:
    """Stock indexes plus ``(exp_key, state)``, which the driver's counts and refresh query."""
    _stock_create_jobs_indexes(self)
    self.db.jobs.create_index(STATE_INDEX)


def inserted(trials: Any, ids: list[Any]) -> None:
    """Remember trials this object inserted: the next refresh reads them by ``_id``."""
    pending = trials.__dict__.setdefault("_pyhc_inserted", set())
    pending.update(ids)


def _assign(trials: Any, docs: list[dict[str, Any]]) -> None:
    docs.sort(key=lambda d: d["_id"])  # as stock: in increasing _id order
    trials._trials = docs
    trials._specs = [d["spec"] for d in docs]
    trials._results = [d["result"] for d in docs]
    trials._miscs = [d["misc"] for d in docs]


def refresh_tids(self: Any, tids: Any) -> None:
    """``MongoTrials.refresh_tids``: incremental when it can be, stock otherwise (module docstring)."""
    now = time.monotonic()
    last_full = self.__dict__.get("_pyhc_full_at")
    every = max(FULL_EVERY, _FULL_SHARE * self.__dict__.get("_pyhc_full_secs", 0.0))
    if tids is not None or last_full is None or not getattr(self, "_trials", None) or now - last_full > every:
        _stock_refresh_tids(self, tids)
        done = time.monotonic()
        self._pyhc_full_at, self._pyhc_full_secs = done, done - now
        self.__dict__.setdefault("_pyhc_inserted", set()).clear()
        return
    base: dict[str, Any] = {} if self._exp_key is None else {"exp_key": self._exp_key}
    held = {t["_id"]: t for t in self._trials}
    watch = {i for i, t in held.items() if t.get("state") in _UNFINISHED} | self.__dict__.get(
        "_pyhc_inserted", set()
    )
    fresh: dict[Any, dict[str, Any]] = {}
    if watch:
        query = {**base, "_id": {"$in": list(watch)}, "state": {"$ne": JOB_STATE_ERROR}}
        fresh.update((d["_id"], d) for d in self.handle.jobs.find(query))
    for doc in self.handle.jobs.find({**base, "state": {"$in": list(_UNFINISHED)}}):
        fresh[doc["_id"]] = doc
    for gone in watch - fresh.keys():  # became ERROR, or deleted
        held.pop(gone, None)
    held.update(fresh)
    self._pyhc_inserted = set()
    _assign(self, list(held.values()))
