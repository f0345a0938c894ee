"""The self-contained HTML report (plotly.js inlined, so it opens offline) and PNG export.

Templates live in ``templates/`` beside this module (jinja2, autoescaped): the dashboard uses the
same stylesheet and fact boxes.
"""

from __future__ import annotations

import datetime
import functools
import math
import os
import shutil
from pathlib import Path
from typing import Any

import jinja2

from pyhoptcluster.control.report.figures import all_figures
from pyhoptcluster.control.report.reduce import Experiment

TEMPLATES = Path(__file__).with_name("templates")
MAX_ROWS = 200  # rows of the error and re-queued tables; the rest is counted
PLOT_CONFIG = {"displaylogo": False, "responsive": True}


def fmt_loss(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}"


def fmt_seconds(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.5g}"
    return str(value)


@functools.cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=jinja2.select_autoescape(["html", "j2"], default_for_string=True),
        undefined=jinja2.StrictUndefined,
    )
    env.globals.update(fmt_loss=fmt_loss, fmt_seconds=fmt_seconds, fmt_value=fmt_value, max_rows=MAX_ROWS)
    return env


@functools.cache
def plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def render(exp: Experiment, where: str) -> str:
    """The whole report as one HTML string. ``where`` names the data's source (never a password)."""
    from pyhoptcluster import __version__

    figures = [
        (
            name,
            fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"plot-{name}", config=PLOT_CONFIG),
        )
        for name, fig in all_figures(exp).items()
    ]
    made = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    return (
        environment()
        .get_template("report.html.j2")
        .render(
            s=exp.summary,
            exp=exp,
            where=where,
            made=made,
            version=__version__,
            figures=figures,
            plotlyjs=jinja2.utils.markupsafe.Markup(plotly_js()),
        )
    )


def write(exp: Experiment, path: str | os.PathLike[str], where: str) -> Path:
    """Write the report to ``path`` (via a temporary file, so a reader never sees half of it)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render(exp, where), encoding="utf-8")
    tmp.replace(path)
    return path


def write_pngs(exp: Experiment, directory: str | os.PathLike[str]) -> list[Path]:
    """One PNG per figure (plotly's kaleido, which drives a local Chrome/Chromium)."""
    try:
        import kaleido  # noqa: F401
    except ImportError as exc:
        raise RuntimeError("--png needs kaleido: pip install 'pyhoptcluster[report]'") from exc
    if "BROWSER_PATH" not in os.environ:
        found = shutil.which("chromium") or shutil.which("google-chrome") or shutil.which("chrome")
        if found is None:
            raise RuntimeError(
                "--png needs Chrome or Chromium on this machine (Debian: apt-get install chromium), "
                "or BROWSER_PATH set to one"
            )
        os.environ["BROWSER_PATH"] = found
    import plotly.io as pio

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    figures = all_figures(exp)
    paths = [directory / f"{name}.png" for name in figures]
    for path in paths:
        path.unlink(missing_ok=True)  # so a file left by an earlier run never passes for this one's
    pio.write_images(list(figures.values()), paths, width=1100)
    # kaleido's batch once left one figure out without an error (a loaded CI machine): render each
    # missing one on its own, and never report a PNG that is not there
    for figure, path in zip(figures.values(), paths, strict=True):
        if not path.is_file() or path.stat().st_size == 0:
            pio.write_image(figure, path, width=1100)
    missing = [p.name for p in paths if not p.is_file() or p.stat().st_size == 0]
    if missing:
        raise RuntimeError(f"kaleido wrote no {', '.join(missing)} in {directory}; run the report again")
    return paths
