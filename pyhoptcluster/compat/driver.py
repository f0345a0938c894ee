"""The fmin driver's poll interval, settable per trials object.

hyperopt's ``fmin`` driver (``hyperopt.fmin.FMinIter``) tops the job queue up to ``max_queue_len``,
then sleeps ``poll_interval_secs`` before it looks again. That is 1 s, and ``fmin()`` has no parameter
for it, so with ``max_queue_len`` = workers and a 0.2 s objective the workers idle most of each second
(``bench/deploy.py`` measured 21 % utilisation on 3 hosts). After :func:`apply` (done by
``import pyhoptcluster``) a trials object can carry its own interval::

    trials = MongoTrials(cluster.mongo_trial_url, exp_key="exp1")
    trials.poll_interval_secs = 0.2
    fmin(objective, space, algo=tpe.suggest, max_evals=100, trials=trials, max_queue_len=6)

Trials objects without the attribute keep hyperopt's 1 s, and an explicit
``FMinIter(poll_interval_secs=...)`` wins.

Push before poll: while fmin runs on a ``MongoTrials`` whose server has change streams, the driver's
sleep between polls ends as soon as a trial finishes (:mod:`pyhoptcluster.compat.wakeup`), so the next
trial is queued within milliseconds, not after the poll interval: ``max_queue_len`` = workers keeps
them busy with the defaults. Without change streams the sleep is the poll interval, as stock.
Worker side safe: imports hyperopt and pymongo only.
"""

from __future__ import annotations

import contextvars
import functools
import math
import sys
import time
import types
from typing import Any

from hyperopt.fmin import FMinIter
from hyperopt.mongoexp import MongoTrials

from pyhoptcluster.compat.wakeup import ChangeWaiter, finished

# the waiter of the fmin running in this context (thread), which the driver's sleep waits on
_WAITER: contextvars.ContextVar[ChangeWaiter | None] = contextvars.ContextVar(
    "pyhoptcluster_waiter", default=None
)

ATTRIBUTE = "poll_interval_secs"
_MARKER = "_pyhoptcluster_poll_interval"
# FMinIter.__init__(self, algo, domain, trials, rstate, asynchronous, max_queue_len, poll_interval_secs, ...):
# the index of poll_interval_secs among the positional arguments after rstate
_POLL_ARG_INDEX = 2


def poll_interval_of(trials: Any) -> float | None:
    """The trials object's own driver poll interval in seconds, or None; ValueError if it is invalid."""
    value = getattr(trials, ATTRIBUTE, None)
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0) or isinstance(value, bool):
        raise ValueError(
            f"trials.{ATTRIBUTE} must be a positive number of seconds (e.g. 0.2), got {value!r}; "
            "delete the attribute for hyperopt's default of 1 s"
        )
    return seconds


def is_applied() -> bool:
    return bool(getattr(FMinIter.__init__, _MARKER, False))


def _sleep(seconds: float) -> None:
    """hyperopt.fmin's ``time.sleep``: ends early when a trial of the running fmin finished."""
    waiter = _WAITER.get()
    if waiter is None or waiter.push is False:
        time.sleep(seconds)
    else:
        waiter.wait(timeout=seconds)


def apply() -> None:
    """Make ``FMinIter`` use ``trials.poll_interval_secs`` when the caller did not pass one, and wake
    on finished trials where the server can push them. Idempotent."""
    if is_applied():
        return
    original = FMinIter.__init__
    original_run = FMinIter.run

    @functools.wraps(original_run)
    def run(self, N, block_until_done=True):
        trials = self.trials
        if not (self.asynchronous and isinstance(trials, MongoTrials)) or _WAITER.get() is not None:
            return original_run(self, N, block_until_done)
        poll = self.poll_interval_secs
        waiter = ChangeWaiter(lambda: trials.handle.jobs, finished(), poll, await_ms=int(poll * 1000))
        waiter.arm()
        token = _WAITER.set(waiter)
        try:
            return original_run(self, N, block_until_done)
        finally:
            _WAITER.reset(token)
            waiter.close()

    clock = types.ModuleType("time", "hyperopt.fmin's time, with pyhoptcluster's waking sleep")
    clock.__dict__.update({k: v for k, v in vars(time).items() if not k.startswith("__")})
    clock.sleep = _sleep
    # the module (``hyperopt.fmin`` the attribute is the fmin function: hyperopt/__init__ imports it)
    sys.modules[FMinIter.__module__].time = clock
    FMinIter.run = run

    @functools.wraps(original)
    def __init__(self, algo, domain, trials, rstate, *args, **kwargs):
        own = poll_interval_of(trials)
        original(self, algo, domain, trials, rstate, *args, **kwargs)
        if own is not None and "poll_interval_secs" not in kwargs and len(args) <= _POLL_ARG_INDEX:
            self.poll_interval_secs = own

    setattr(__init__, _MARKER, True)
    FMinIter.__init__ = __init__
