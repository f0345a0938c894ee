"""plotly figures of an :class:`~.reduce.Experiment` (no drawing of our own: plotly does it).

Each function takes the reduced experiment and returns a ``plotly.graph_objects.Figure``;
:func:`all_figures` gives them by name, in the order the report and the dashboard show them.
"""

from __future__ import annotations

import datetime
import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from pyhoptcluster.control.report.reduce import STATE_ORDER, Experiment

STATE_COLORS = {
    "new": "#9e9e9e",
    "running": "#1f77b4",
    "done": "#2ca02c",
    "failed": "#ff7f0e",
    "error": "#d62728",
    "cancelled": "#7f7f7f",
}
LAYOUT = {"template": "plotly_white", "margin": {"l": 60, "r": 20, "t": 50, "b": 50}, "height": 380}


def _empty(fig: go.Figure, text: str) -> go.Figure:
    fig.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    return fig


def loss_per_trial(exp: Experiment) -> go.Figure:
    best = exp.best
    fig = go.Figure(layout={**LAYOUT, "title": "Loss per trial and best so far"})
    fig.add_trace(
        go.Scatter(
            x=best.tids, y=best.losses, mode="markers", name="loss", marker={"size": 6, "opacity": 0.7}
        )
    )
    fig.add_trace(
        go.Scatter(x=best.tids, y=best.best_by_tid, mode="lines", line_shape="hv", name="best so far")
    )
    if best.best_tid is not None:
        fig.add_trace(
            go.Scatter(
                x=[best.best_tid],
                y=[best.best_loss],
                mode="markers",
                name=f"best (trial {best.best_tid})",
                marker={"size": 13, "symbol": "star", "color": "#d62728"},
            )
        )
    fig.update_xaxes(title="trial id")
    fig.update_yaxes(title="loss")
    return fig if best.tids else _empty(fig, "no finished trial yet")


def best_over_time(exp: Experiment) -> go.Figure:
    best = exp.best
    fig = go.Figure(layout={**LAYOUT, "title": "Best loss over time"})
    losses = [t.loss for t in sorted(exp.trials, key=lambda t: t.refresh_time or datetime.datetime.max)]
    times = [
        t.refresh_time for t in sorted(exp.trials, key=lambda t: t.refresh_time or datetime.datetime.max)
    ]
    pairs = [(x, y) for x, y in zip(times, losses, strict=True) if x is not None and y is not None]
    fig.add_trace(
        go.Scatter(
            x=[p[0] for p in pairs],
            y=[p[1] for p in pairs],
            mode="markers",
            name="loss (finish time)",
            marker={"size": 5, "opacity": 0.45},
        )
    )
    fig.add_trace(
        go.Scatter(x=best.times, y=best.best_by_time, mode="lines", line_shape="hv", name="best so far")
    )
    fig.update_xaxes(title="finish time (UTC)")
    fig.update_yaxes(title="loss")
    return fig if best.times else _empty(fig, "no finished trial yet")


def params_vs_loss(exp: Experiment) -> go.Figure:
    series = exp.params
    cols = min(3, max(1, len(series)))
    rows = max(1, math.ceil(len(series) / cols))
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=[s.label + (" (choice)" if s.categorical else "") for s in series] or None,
        horizontal_spacing=0.08,
        vertical_spacing=0.18 if rows > 1 else 0.1,
    )
    fig.update_layout(
        **{
            **LAYOUT,
            "height": 300 * rows + 90,
            "title": "Hyperparameters against loss",
            "margin": {**LAYOUT["margin"], "t": 90},
        }
    )
    for i, s in enumerate(series):
        row, col = i // cols + 1, i % cols + 1
        hover = [f"trial {tid}" for tid in s.tids]
        if s.categorical:
            fig.add_trace(
                go.Box(
                    x=s.values,
                    y=s.losses,
                    boxpoints="all",
                    jitter=0.4,
                    pointpos=0,
                    name=s.label,
                    text=hover,
                    showlegend=False,
                ),
                row=row,
                col=col,
            )
            fig.update_xaxes(
                type="category", categoryorder="array", categoryarray=s.categories, row=row, col=col
            )
        else:
            fig.add_trace(
                go.Scatter(
                    x=s.values,
                    y=s.losses,
                    mode="markers",
                    name=s.label,
                    text=hover,
                    marker={"size": 6, "color": s.tids, "colorscale": "Viridis", "opacity": 0.8},
                    showlegend=False,
                ),
                row=row,
                col=col,
            )
            if s.log_scale:
                fig.update_xaxes(type="log", row=row, col=col)
        fig.update_yaxes(title="loss" if col == 1 else None, row=row, col=col)
    return fig if series else _empty(fig, "no finished trial yet")


def worker_timeline(exp: Experiment) -> go.Figure:
    tl, use = exp.timeline, exp.utilisation
    pct = {w.worker: w.percent for w in use.workers}
    label = {w: f"{w} ({pct.get(w, 0):.0f} %)" for w in tl.workers}
    fig = go.Figure(
        layout={
            **LAYOUT,
            "title": f"Workers: busy with which trial (overall utilisation {use.overall_percent:.0f} %)",
            "height": max(260, 60 + 34 * len(tl.workers)),
            "barmode": "overlay",
        }
    )
    for state in STATE_ORDER:
        segs = [s for s in tl.segments if s.state == state]
        if not segs:
            continue
        fig.add_trace(
            go.Bar(
                base=[s.start for s in segs],
                x=[s.seconds * 1000.0 for s in segs],  # a date axis counts in milliseconds
                y=[label[s.worker] for s in segs],
                orientation="h",
                name=state,
                marker={"color": STATE_COLORS[state], "line": {"width": 0.5, "color": "white"}},
                customdata=[[s.tid, s.seconds, s.loss] for s in segs],
                hovertemplate="trial %{customdata[0]}<br>%{customdata[1]:.2f} s<br>loss %{customdata[2]}"
                "<extra>" + state + "</extra>",
            )
        )
    if tl.lost:
        fig.add_trace(
            go.Scatter(
                x=[x.at for x in tl.lost],
                y=[label[x.worker] for x in tl.lost],
                mode="markers",
                name="taken back (no heartbeat)",
                marker={"symbol": "x", "size": 12, "color": "#d62728"},
                text=[f"trial {x.tid}: {x.reason}" for x in tl.lost],
                hoverinfo="text",
            )
        )
    fig.update_xaxes(type="date", title="time (UTC)")
    fig.update_yaxes(categoryorder="array", categoryarray=[label[w] for w in reversed(tl.workers)])
    return fig if tl.workers else _empty(fig, "no trial reserved by a worker yet")


def trial_states(exp: Experiment) -> go.Figure:
    counts = exp.states.counts
    names = [s for s in STATE_ORDER if counts.get(s) or s in ("new", "running", "done", "error")]
    fig = go.Figure(layout={**LAYOUT, "title": "Trials by state", "height": 300})
    fig.add_trace(
        go.Bar(
            x=names,
            y=[counts.get(s, 0) for s in names],
            marker={"color": [STATE_COLORS[s] for s in names]},
            text=[counts.get(s, 0) for s in names],
            textposition="auto",
        )
    )
    fig.update_yaxes(title="trials")
    return fig


def all_figures(exp: Experiment) -> dict[str, go.Figure]:
    return {
        "loss_per_trial": loss_per_trial(exp),
        "best_over_time": best_over_time(exp),
        "params": params_vs_loss(exp),
        "timeline": worker_timeline(exp),
        "states": trial_states(exp),
    }
