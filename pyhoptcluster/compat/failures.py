"""When every trial of an fmin failed, say why: the first errors' messages, not "There are no
evaluation tasks, cannot return argmin" (hyperopt #911, #312: the cause is only in a worker's log).

:func:`trials_fmin` replaces ``MongoTrials.fmin`` (what ``fmin(trials=MongoTrials(...))`` calls); it
changes nothing when a trial succeeded. Worker and compatibility side: imports no Ansible code.
"""

from __future__ import annotations

import warnings
from typing import Any

import pymongo
from hyperopt import base
from hyperopt.base import JOB_STATE_DONE, JOB_STATE_ERROR
from hyperopt.exceptions import AllTrialsFailed


class TrialsFailedError(AllTrialsFailed):
    """fmin ended with no DONE trial but ERROR ones: the first errors' messages say why (a package the
    workers lack, a different Python or cloudpickle on them, a bug in the objective)."""

    def __init__(self, message: str, errors: list[tuple[Any, str]]) -> None:
        super().__init__(message)
        self.errors = errors  # (tid, "Type: message") of the first ERROR trials


# how many ERROR trials' messages the exception quotes
FIRST_ERRORS = 3
_NO_TASKS = "There are no evaluation tasks"


def _error_text(error: Any) -> str:
    """``"ValueError: boom"`` from a job's ``error`` field (``["<class 'ValueError'>", "boom"]``)."""
    if isinstance(error, list | tuple) and len(error) == 2:
        kind, message = (str(e) for e in error)
        if kind.startswith("<class '") and kind.endswith("'>"):
            kind = kind[len("<class '") : -2].rsplit(".", 1)[-1]
        return f"{kind}: {message}"
    return str(error)


def failure_summary(trials: Any) -> TrialsFailedError | None:
    """The error to raise when ``trials`` (a MongoTrials) has ERROR trials and no DONE one, else None."""
    if any(t.get("state") == JOB_STATE_DONE for t in getattr(trials, "_dynamic_trials", None) or []):
        return None
    query: dict[str, Any] = {"state": JOB_STATE_ERROR}
    if trials._exp_key is not None:
        query["exp_key"] = trials._exp_key
    jobs = trials.handle.jobs
    if jobs.count_documents({**query, "state": JOB_STATE_DONE}, limit=1):
        return None
    n = jobs.count_documents(query)
    if not n:
        return None
    first = [
        (doc.get("tid"), _error_text(doc.get("error")))
        for doc in jobs.find(query, projection=["tid", "error"])
        .sort("tid", pymongo.ASCENDING)
        .limit(FIRST_ERRORS)
    ]
    which = f"experiment {trials._exp_key!r}" if trials._exp_key is not None else "the experiment"
    quoted = "; ".join(f"trial {tid}: {text}" for tid, text in first)
    return TrialsFailedError(
        f"no trial of {which} succeeded: {n} failed on the workers. First error"
        f"{'s' if len(first) > 1 else ''}: {quoted}. Each ERROR trial keeps its error; a package the "
        "objective imports may be missing on the workers: check with cluster.check(require=[...]) or "
        "`pyhoptcluster check -i INV --require PKG`",
        first,
    )


def trials_fmin(self, fn, space, *args, **kwargs):
    """``MongoTrials.fmin`` (what ``fmin(trials=MongoTrials(...))`` calls): as stock, but when no trial
    succeeded and some failed, say why instead of "There are no evaluation tasks, cannot return argmin"
    (raised as :class:`TrialsFailedError`) or a silent None (``return_argmin=False``: a warning)."""
    try:
        result = base.Trials.fmin(self, fn, space, *args, **kwargs)
    except Exception as exc:
        if not (isinstance(exc, AllTrialsFailed) or str(exc).startswith(_NO_TASKS)):
            raise
        failed = failure_summary(self)
        if failed is None:
            raise
        raise failed from exc
    if result is None and not self.trials:
        failed = failure_summary(self)
        if failed is not None:
            warnings.warn(str(failed), RuntimeWarning, stacklevel=3)
    return result
