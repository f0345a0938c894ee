"""The fmin driver's poll interval, settable per trials object.

hyperopt's ``fmin`` driver (``hyperopt.fmin.FMinIter``) tops the job queue up to ``max_queue_len``,
then sleeps ``poll_interval_secs`` before it looks again. That is 1 s, and ``fmin()`` has no parameter
for it, so with ``max_queue_len`` = workers and a 0.2 s objective the workers idle most of each second
(``bench/deploy.py`` measured 21 % utilisation on 3 hosts). After :func:`apply` (done by
``import pyhoptcluster``) a trials object can carry its own interval::

    trials = MongoTrials(cluster.mongo_trial_url, exp_key="exp1")
    trials.poll_interval_secs = 0.2
    fmin(objective, space, algo=tpe.suggest, max_evals=100, trials=trials, max_queue_len=6)

Every poll re-reads the experiment's trial documents from the server, so a short interval costs
server time that grows with the number of trials; a deeper ``max_queue_len`` is the other way to
keep workers busy. Trials objects without the attribute keep hyperopt's 1 s, and an explicit
``FMinIter(poll_interval_secs=...)`` wins. Worker side safe: imports hyperopt only.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from hyperopt.fmin import FMinIter

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


def apply() -> None:
    """Make ``FMinIter`` use ``trials.poll_interval_secs`` when the caller did not pass one. Idempotent."""
    if is_applied():
        return
    original = FMinIter.__init__

    @functools.wraps(original)
    def __init__(self, algo, domain, trials, rstate, *args, **kwargs):
        own = poll_interval_of(trials)
        original(self, algo, domain, trials, rstate, *args, **kwargs)
        if own is not None and "poll_interval_secs" not in kwargs and len(args) <= _POLL_ARG_INDEX:
            self.poll_interval_secs = own

    setattr(__init__, _MARKER, True)
    FMinIter.__init__ = __init__
