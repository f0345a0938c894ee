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
poll) uses the same compound index.

Every query here has only the fields of one index in its filter (``_id``, or ``exp_key`` and
``state``), and the rest is checked on this side: SecantusDB's planner uses an index only then, and
scans the collection for anything else (measured at 2,800 trials: 1 ms by ``_id`` alone, 88 ms with
``exp_key`` and ``state`` added). For the same reason, fmin's count of DONE trials right after a
refresh (:func:`cached_count`) is counted in what that refresh read: the server would fetch every
finished trial to count them, O(n) per poll. Worker and compatibility side: imports no Ansible code.
"""

from __future__ import annotations

import time
from typing import Any

import pymongo
from hyperopt import mongoexp
from hyperopt.base import JOB_STATE_DONE, JOB_STATE_ERROR, JOB_STATE_NEW, JOB_STATE_RUNNING

# seconds between full (stock) refreshes of one trials object; raised to keep them under ~2 % of the
# time when a full refresh itself is slow (large experiments)
FULL_EVERY = 30.0
_FULL_SHARE = 50
_UNFINISHED = (JOB_STATE_NEW, JOB_STATE_RUNNING)
STATE_INDEX = [("exp_key", pymongo.ASCENDING), ("state", pymongo.ASCENDING)]
# workers that take every experiment's jobs reserve by state alone
STATE_ONLY_INDEX = [("state", pymongo.ASCENDING)]
# a count of DONE trials this soon after a refresh is taken from what the refresh read
CACHED_FOR = 0.1

_stock_refresh_tids = mongoexp.MongoTrials.refresh_tids
_stock_create_jobs_indexes = mongoexp.MongoJobs.create_jobs_indexes


def create_jobs_indexes(self: Any) -> None:
    """Stock indexes plus ``(exp_key, state)``, which the driver's counts and refresh and the workers'
    reservations query, and ``state`` (workers without an experiment key)."""
    _stock_create_jobs_indexes(self)
    self.db.jobs.create_index(STATE_INDEX)
    self.db.jobs.create_index(STATE_ONLY_INDEX)


def cached_count(trials: Any, state: Any) -> int | None:
    """The number of DONE trials as the refresh that ended less than ``CACHED_FOR`` s ago read them,
    or None (ask the server). Only for DONE: a finished trial does not change again, so the count is
    as fresh as the refresh; another driver's trial that was queued and finished between two
    incremental refreshes is counted from the next full one (fmin uses the count for its progress)."""
    if state != JOB_STATE_DONE:
        return None
    at = trials.__dict__.get("_pyhc_refreshed_at")
    if at is None or time.monotonic() - at > CACHED_FOR:
        return None
    return sum(1 for t in getattr(trials, "_trials", ()) if t.get("state") == JOB_STATE_DONE)


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
        # a refresh of some tids only holds those: nothing to count in
        self._pyhc_refreshed_at = done if tids is None else None
        return
    base: dict[str, Any] = {} if self._exp_key is None else {"exp_key": self._exp_key}
    held = {t["_id"]: t for t in self._trials}
    watch = {i for i, t in held.items() if t.get("state") in _UNFINISHED} | self.__dict__.get(
        "_pyhc_inserted", set()
    )
    fresh: dict[Any, dict[str, Any]] = {}
    if watch:  # by _id alone (module docstring); the experiment and the state are checked here
        for doc in self.handle.jobs.find({"_id": {"$in": list(watch)}}):
            if doc.get("state") != JOB_STATE_ERROR and all(doc.get(k) == v for k, v in base.items()):
                fresh[doc["_id"]] = doc
    for doc in self.handle.jobs.find({**base, "state": {"$in": list(_UNFINISHED)}}):
        fresh[doc["_id"]] = doc
    for gone in watch - fresh.keys():  # became ERROR, or deleted
        held.pop(gone, None)
    held.update(fresh)
    self._pyhc_inserted = set()
    _assign(self, list(held.values()))
    self._pyhc_refreshed_at = time.monotonic()
