"""Scaling curves as pictures: the benchmarks write a PNG next to each table they print.

Drawn with plotly and written by kaleido (``pip install 'pyhoptcluster[report]'``, plus Chrome or
Chromium on the machine), the same pair the report's ``--png`` uses. A benchmark run without them
still prints its tables and says which picture it could not write.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"

Series = dict[str, list[tuple[float, float]]]


def write_curve(
    name: str,
    title: str,
    x_title: str,
    y_title: str,
    series: Series,
    baselines: dict[str, float] | None = None,
    log_x: bool = False,
    out: Path = OUT,
) -> Path | None:
    """One line per series (x, y points), one dashed horizontal line per baseline; ``out/name.png``.
    Returns the path, or None (with the reason on stderr) when plotly, kaleido or a browser is missing."""
    try:
        import kaleido  # noqa: F401
        import plotly.graph_objects as go
        import plotly.io as pio
    except ImportError as exc:
        print(f"{name}.png not written: {exc} (pip install 'pyhoptcluster[report]')", file=sys.stderr)
        return None
    if "BROWSER_PATH" not in os.environ:
        browser = shutil.which("chromium") or shutil.which("google-chrome")
        if browser is None:
            print(f"{name}.png not written: no Chrome or Chromium on this machine", file=sys.stderr)
            return None
        os.environ["BROWSER_PATH"] = browser
    fig = go.Figure()
    for label, points in series.items():
        xs, ys = zip(*points, strict=True) if points else ((), ())
        fig.add_trace(go.Scatter(x=list(xs), y=list(ys), mode="lines+markers", name=label))
    for label, value in (baselines or {}).items():
        fig.add_hline(y=value, line_dash="dash", annotation_text=label, annotation_position="top left")
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, template="plotly_white")
    if log_x:
        fig.update_xaxes(type="log")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    path.unlink(missing_ok=True)
    pio.write_image(fig, path, width=900, height=520)
    if not path.is_file() or path.stat().st_size == 0:
        print(f"{name}.png not written: kaleido produced no file", file=sys.stderr)
        return None
    print(f"wrote {path}")
    return path
