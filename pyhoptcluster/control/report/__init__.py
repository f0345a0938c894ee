"""See an experiment: a self-contained HTML report and a live dashboard (``pyhoptcluster[report]``).

- :mod:`.reduce`: job documents -> dataclasses (best so far, per-worker timeline, utilisation,
  states, hyperparameters); pure functions, stdlib only.
- :mod:`.source`: reads jobs, worker records and the search space from a server.
- :mod:`.figures`: plotly figures of a reduced experiment; :mod:`.html`: the report file.
- :mod:`.dashboard`: the local web page (Starlette + uvicorn), bound to 127.0.0.1.

Control side only: worker hosts never import this package (nor plotly, Starlette, uvicorn).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from pyhoptcluster.control.report.reduce import Experiment, experiment
from pyhoptcluster.control.report.source import ServerNotRunningError, Source

__all__ = ["ReportResult", "ServerNotRunningError", "Source", "load_experiment", "write_report"]


def load_experiment(source: Source, exp_key: str) -> Experiment:
    """Read and reduce one experiment; ``ValueError`` naming the experiments there if it has no trials."""
    source.check()
    docs = source.job_docs(exp_key)
    if not docs:
        known = [e.exp_key for e in source.experiments()]
        there = ", ".join(repr(k) for k in known[:20]) or "none"
        raise ValueError(f"no trials with exp_key {exp_key!r} in {source.shown}; experiments there: {there}")
    return experiment(exp_key, docs, source.space(exp_key), now=source.now())


@dataclass(frozen=True)
class ReportResult:
    path: Path
    pngs: list[Path]
    trials: int
    seconds: float  # reading + reducing + writing


def write_report(
    source: Source, exp_key: str, path: str | os.PathLike[str], png_dir: str | os.PathLike[str] | None = None
) -> ReportResult:
    """Write the HTML report of ``exp_key`` to ``path`` (and a PNG per figure to ``png_dir``)."""
    from pyhoptcluster.control.report import html

    t0 = time.perf_counter()
    exp = load_experiment(source, exp_key)
    out = html.write(exp, path, where=source.shown)
    pngs = html.write_pngs(exp, png_dir) if png_dir is not None else []
    return ReportResult(out, pngs, exp.summary.trials, time.perf_counter() - t0)
