"""From an experiment's job documents to what the report shows: pure functions, dataclasses out.

Input is what ``MongoTrials`` and the workers leave in the ``jobs`` collection (``tid``, ``state``,
``result``, ``misc.vals``, ``owner`` = ``host:instance:pid``, ``book_time``, ``refresh_time``,
``attempts``, ``reclaims`` = ``[{owner, at, silent_for, reason}]``, ``error`` = ``[type, message]``).
Nothing here talks to a server, so the unit tests feed it the documents of a recorded real run.

A trial's busy interval is ``book_time`` (the worker reserved it) to ``refresh_time`` (it wrote
the result); a RUNNING trial is busy until ``now``. A worker is its owner without the pid
(``host:instance``), so a worker restarted by its supervisor stays one row of the timeline.
Times are naive UTC datetimes, as pymongo returns them.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# hyperopt.base's JOB_STATE_* values, named (kept here so this module needs nothing but the stdlib).
STATE_NAMES = {0: "new", 1: "running", 2: "done", 3: "error", 4: "cancelled"}
STATE_ORDER = ("new", "running", "done", "failed", "error", "cancelled")
# Distributions whose natural axis is logarithmic.
LOG_DISTS = frozenset({"loguniform", "qloguniform", "lognormal", "qlognormal"})


@dataclass(frozen=True)
class ParamInfo:
    """What the search space says about one hyperparameter (from the pickled Domain, if readable)."""

    label: str
    dist: str = ""  # "uniform", "loguniform", "randint", ... ("" when unknown)
    choices: tuple[str, ...] | None = None  # hp.choice: the options' labels, by index


@dataclass(frozen=True)
class Reclaim:
    owner: str  # host:instance
    at: datetime.datetime | None
    silent_for: float | None
    reason: str


@dataclass(frozen=True)
class Trial:
    tid: int
    state: str  # one of STATE_ORDER ("failed" = done, but the objective returned status "fail")
    loss: float | None
    params: dict[str, Any]  # label -> value as in misc.vals (hp.choice: the index)
    worker: str | None
    book_time: datetime.datetime | None
    refresh_time: datetime.datetime | None
    attempts: int = 0
    reclaims: tuple[Reclaim, ...] = ()
    error: str | None = None

    @property
    def duration(self) -> float | None:
        if self.book_time is None or self.refresh_time is None:
            return None
        return (self.refresh_time - self.book_time).total_seconds()


def _naive(value: Any) -> datetime.datetime | None:
    if not isinstance(value, datetime.datetime):
        return None
    if value.tzinfo is not None:
        value = value.astimezone(datetime.UTC).replace(tzinfo=None)
    return value


def worker_name(owner: Any) -> str | None:
    """``host:instance`` of a ``host:instance:pid`` owner (stock hyperopt: ``host:pid``)."""
    if owner is None:
        return None
    text = str(owner[0] if isinstance(owner, list | tuple) and owner else owner)
    head, sep, tail = text.rpartition(":")
    return head if sep and tail.isdigit() and head else text


def _loss(doc: Mapping[str, Any]) -> float | None:
    result = doc.get("result") or {}
    if result.get("status") != "ok":
        return None
    try:
        loss = float(result.get("loss"))
    except (TypeError, ValueError):
        return None
    return loss if math.isfinite(loss) else None


def _state(doc: Mapping[str, Any]) -> str:
    name = STATE_NAMES.get(doc.get("state"), "new")
    if name == "done" and (doc.get("result") or {}).get("status") == "fail":
        return "failed"
    return name


def _error(doc: Mapping[str, Any]) -> str | None:
    err = doc.get("error")
    if err is None:
        result = doc.get("result") or {}
        if result.get("status") == "fail":
            return str(result.get("failure") or result.get("error") or "the objective returned status 'fail'")
        return None
    if isinstance(err, list | tuple) and len(err) == 2:
        kind = str(err[0]).removeprefix("<class '").removesuffix("'>")
        return f"{kind}: {err[1]}"
    return str(err)


def trial_from_doc(doc: Mapping[str, Any]) -> Trial:
    vals = (doc.get("misc") or {}).get("vals") or {}
    params = {label: v[0] for label, v in vals.items() if isinstance(v, list | tuple) and len(v) > 0}
    reclaims = tuple(
        Reclaim(
            owner=worker_name(r.get("owner")) or "?",
            at=_naive(r.get("at")),
            silent_for=r.get("silent_for"),
            reason=str(r.get("reason", "")),
        )
        for r in doc.get("reclaims") or ()
        if isinstance(r, Mapping)
    )
    return Trial(
        tid=int(doc.get("tid", -1)),
        state=_state(doc),
        loss=_loss(doc),
        params=params,
        worker=worker_name(doc.get("owner")),
        book_time=_naive(doc.get("book_time")),
        refresh_time=_naive(doc.get("refresh_time")),
        attempts=int(doc.get("attempts") or 0),
        reclaims=reclaims,
        error=_error(doc),
    )


def trials_from_docs(docs: Iterable[Mapping[str, Any]]) -> list[Trial]:
    """Job documents of one experiment -> trials, by tid."""
    return sorted((trial_from_doc(d) for d in docs), key=lambda t: t.tid)


# -- best so far ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BestSoFar:
    tids: list[int]  # trials with a loss, by tid
    losses: list[float]
    best_by_tid: list[float]  # running minimum over tids
    times: list[datetime.datetime]  # finish times of trials with a loss, in finish order
    best_by_time: list[float]  # running minimum over finish time
    best_tid: int | None = None
    best_loss: float | None = None


def _running_min(values: Iterable[float]) -> list[float]:
    out: list[float] = []
    for v in values:
        out.append(v if not out or v < out[-1] else out[-1])
    return out


def best_so_far(trials: Iterable[Trial]) -> BestSoFar:
    scored = [t for t in trials if t.loss is not None]
    by_tid = sorted(scored, key=lambda t: t.tid)
    timed = sorted((t for t in scored if t.refresh_time is not None), key=lambda t: (t.refresh_time, t.tid))
    best = min(by_tid, key=lambda t: (t.loss, t.tid), default=None)
    return BestSoFar(
        tids=[t.tid for t in by_tid],
        losses=[t.loss for t in by_tid],  # type: ignore[misc]
        best_by_tid=_running_min(t.loss for t in by_tid),  # type: ignore[misc]
        times=[t.refresh_time for t in timed],  # type: ignore[misc]
        best_by_time=_running_min(t.loss for t in timed),  # type: ignore[misc]
        best_tid=best.tid if best else None,
        best_loss=best.loss if best else None,
    )


# -- timeline and utilisation -----------------------------------------------------------------------
@dataclass(frozen=True)
class Segment:
    worker: str
    tid: int
    start: datetime.datetime
    end: datetime.datetime
    state: str
    loss: float | None

    @property
    def seconds(self) -> float:
        return max(0.0, (self.end - self.start).total_seconds())


@dataclass(frozen=True)
class LostAttempt:
    """A run of a trial that a worker never finished: the sweep took it back at ``at``."""

    worker: str
    tid: int
    at: datetime.datetime
    silent_for: float | None
    reason: str


@dataclass(frozen=True)
class Timeline:
    workers: list[str]
    segments: list[Segment]
    lost: list[LostAttempt]
    start: datetime.datetime | None
    end: datetime.datetime | None

    @property
    def wall_seconds(self) -> float:
        if self.start is None or self.end is None:
            return 0.0
        return max(0.0, (self.end - self.start).total_seconds())


def timeline(trials: Iterable[Trial], now: datetime.datetime | None = None) -> Timeline:
    """Busy intervals per worker. RUNNING trials end at ``now`` (if given; else they are left out)."""
    segments: list[Segment] = []
    lost: list[LostAttempt] = []
    for t in trials:
        for r in t.reclaims:
            if r.at is not None:
                lost.append(LostAttempt(r.owner, t.tid, r.at, r.silent_for, r.reason))
        if t.worker is None or t.book_time is None:
            continue
        end = t.refresh_time if t.state != "running" else now
        if end is None or end < t.book_time:
            continue
        segments.append(Segment(t.worker, t.tid, t.book_time, end, t.state, t.loss))
    segments.sort(key=lambda s: (s.start, s.tid))
    workers = sorted({s.worker for s in segments} | {x.worker for x in lost})
    starts = [s.start for s in segments]
    ends = [s.end for s in segments] + [x.at for x in lost]
    return Timeline(workers, segments, lost, min(starts, default=None), max(ends, default=None))


@dataclass(frozen=True)
class WorkerUse:
    worker: str
    trials: int
    busy_seconds: float
    percent: float  # busy time / the experiment's wall time


@dataclass(frozen=True)
class Utilisation:
    workers: list[WorkerUse]
    wall_seconds: float
    overall_percent: float  # all busy time / (workers x wall time)


def _merged_seconds(intervals: list[tuple[datetime.datetime, datetime.datetime]]) -> float:
    total, cur_start, cur_end = 0.0, None, None
    for start, end in sorted(intervals):
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                total += (cur_end - cur_start).total_seconds()
            cur_start, cur_end = start, end
        elif end > cur_end:
            cur_end = end
    if cur_end is not None:
        total += (cur_end - cur_start).total_seconds()
    return total


def utilisation(tl: Timeline) -> Utilisation:
    """How busy each worker was between the experiment's first reservation and its last result."""
    wall = tl.wall_seconds
    rows = []
    for w in tl.workers:
        mine = [s for s in tl.segments if s.worker == w]
        busy = _merged_seconds([(s.start, s.end) for s in mine])
        rows.append(WorkerUse(w, len(mine), busy, 100.0 * busy / wall if wall > 0 else 0.0))
    total = sum(r.busy_seconds for r in rows)
    overall = 100.0 * total / (wall * len(rows)) if wall > 0 and rows else 0.0
    return Utilisation(rows, wall, overall)


# -- states, errors, re-queued trials ---------------------------------------------------------------
@dataclass(frozen=True)
class States:
    counts: dict[str, int]  # every name of STATE_ORDER, in that order
    errors: list[Trial]  # state error or failed, with a message
    requeued: list[Trial]  # trials the sweep took back from a silent worker at least once


def states(trials: Iterable[Trial]) -> States:
    trials = list(trials)
    counts = dict.fromkeys(STATE_ORDER, 0)
    for t in trials:
        counts[t.state] = counts.get(t.state, 0) + 1
    errors = [t for t in trials if t.state in ("error", "failed")]
    requeued = [t for t in trials if t.reclaims or t.attempts]
    return States(counts, errors, requeued)


# -- hyperparameters against loss -------------------------------------------------------------------
@dataclass(frozen=True)
class ParamSeries:
    label: str
    categorical: bool
    tids: list[int]
    values: list[Any]  # numbers, or category labels when categorical
    losses: list[float]
    categories: list[str] = field(default_factory=list)  # the axis order when categorical
    log_scale: bool = False


def _option_label(info: ParamInfo | None, value: Any) -> str:
    if info is not None and info.choices is not None and isinstance(value, int | float):
        idx = int(value)
        if 0 <= idx < len(info.choices):
            return info.choices[idx]
    return f"option {int(value)}" if isinstance(value, int | float) else str(value)


def param_series(trials: Iterable[Trial], space: Mapping[str, ParamInfo] | None = None) -> list[ParamSeries]:
    """One series per hyperparameter: its value in each trial with a loss. hp.choice parameters are
    categorical (labelled by their option when the space is known, else ``option <index>``)."""
    space = space or {}
    scored = [t for t in trials if t.loss is not None]
    labels = sorted({label for t in scored for label in t.params})
    out = []
    for label in labels:
        info = space.get(label)
        rows = [(t.tid, t.params[label], t.loss) for t in scored if label in t.params]
        categorical = info is not None and info.choices is not None
        if categorical:
            n = len(info.choices)  # type: ignore[arg-type]
            cats = [_option_label(info, i) for i in range(n)]
            values = [_option_label(info, v) for _, v, _ in rows]
        else:
            cats, values = [], [v for _, v, _ in rows]
        numeric = [v for v in values if isinstance(v, int | float)]
        log = bool(info and info.dist in LOG_DISTS) or (
            not categorical
            and not info
            and len(numeric) > 2
            and min(numeric) > 0
            and max(numeric) / min(numeric) > 1e3
        )
        out.append(
            ParamSeries(label, categorical, [r[0] for r in rows], values, [r[2] for r in rows], cats, log)
        )
    return out


# -- the whole experiment -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Summary:
    exp_key: str
    trials: int
    counts: dict[str, int]
    best_tid: int | None
    best_loss: float | None
    best_params: dict[str, Any]  # choice parameters by option label
    start: datetime.datetime | None
    end: datetime.datetime | None
    wall_seconds: float
    workers: int
    trials_per_second: float
    utilisation_percent: float


@dataclass(frozen=True)
class Experiment:
    summary: Summary
    trials: list[Trial]
    best: BestSoFar
    timeline: Timeline
    utilisation: Utilisation
    states: States
    params: list[ParamSeries]


def experiment(
    exp_key: str,
    docs: Iterable[Mapping[str, Any]],
    space: Mapping[str, ParamInfo] | None = None,
    now: datetime.datetime | None = None,
) -> Experiment:
    """Everything the report and the dashboard show about one experiment."""
    trials = trials_from_docs(docs)
    best = best_so_far(trials)
    tl = timeline(trials, now)
    use = utilisation(tl)
    st = states(trials)
    best_params: dict[str, Any] = {}
    if best.best_tid is not None:
        winner = next(t for t in trials if t.tid == best.best_tid)
        for label, value in sorted(winner.params.items()):
            info = (space or {}).get(label)
            best_params[label] = _option_label(info, value) if info and info.choices is not None else value
    finished = sum(st.counts[s] for s in ("done", "failed", "error"))
    summary = Summary(
        exp_key=exp_key,
        trials=len(trials),
        counts=st.counts,
        best_tid=best.best_tid,
        best_loss=best.best_loss,
        best_params=best_params,
        start=tl.start,
        end=tl.end,
        wall_seconds=tl.wall_seconds,
        workers=len(tl.workers),
        trials_per_second=finished / tl.wall_seconds if tl.wall_seconds > 0 else 0.0,
        utilisation_percent=use.overall_percent,
    )
    return Experiment(summary, trials, best, tl, use, st, param_series(trials, space))
