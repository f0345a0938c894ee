"""The live dashboard: a Starlette app served by uvicorn on 127.0.0.1 only.

The page loads plotly.js from the app itself (the copy inside the plotly package: no internet
needed) and polls three JSON endpoints every ``refresh`` seconds:

- ``/api/status``: the server (answers or not), the workers per host from the ``workers``
  collection (state, current trial, jobs done, heartbeat age), the queue (trials by state);
- ``/api/experiments``: every exp_key with its counts, newest first (the picker);
- ``/api/experiment?exp_key=K``: the report's facts and tables (HTML rendered here, autoescaped)
  and its figures (plotly JSON), redrawn in place with ``Plotly.react``.

The database connection lives in this process; no response carries the URL's password (``shown``
has none). Host headers other than 127.0.0.1/localhost are refused (no DNS rebinding).
"""

from __future__ import annotations

import datetime
import json
import threading
from collections import defaultdict
from typing import Any

import pymongo.errors
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from pyhoptcluster.control.report.figures import all_figures
from pyhoptcluster.control.report.html import environment, plotly_js
from pyhoptcluster.control.report.reduce import STATE_NAMES, ParamInfo, experiment
from pyhoptcluster.control.report.source import Source
from pyhoptcluster.errors import PyhoptclusterError

BIND = "127.0.0.1"


def _age(now: datetime.datetime, then: Any) -> float | None:
    if not isinstance(then, datetime.datetime):
        return None
    return round((now - then.replace(tzinfo=None)).total_seconds(), 1)


def worker_rows(records: list[dict[str, Any]], now: datetime.datetime) -> dict[str, list[dict[str, Any]]]:
    """Worker records by host, each with its heartbeat age and whether it still looks alive."""
    hosts: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        age = _age(now, rec.get("heartbeat"))
        interval = float(rec.get("heartbeat_interval") or 10.0)
        state = str(rec.get("state") or "?")
        if state in ("busy", "idle") and (age is None or age > 3 * interval):
            state = f"silent ({state})"
        hosts[str(rec.get("host") or "?")].append(
            {
                "instance": str(rec.get("instance") or ""),
                "pid": rec.get("pid"),
                "state": state,
                "tid": rec.get("tid"),
                "exp_key": rec.get("exp_key"),
                "jobs_done": rec.get("jobs_done") or 0,
                "jobs_failed": rec.get("jobs_failed") or 0,
                "heartbeat_age": age,
            }
        )
    for rows in hosts.values():
        rows.sort(key=lambda r: (r["instance"].zfill(6), r["pid"] or 0))
    return dict(sorted(hosts.items()))


class Dashboard:
    """The app's state: one :class:`Source` and the search spaces read so far (unpickled once)."""

    def __init__(self, source: Source, refresh: float = 2.0) -> None:
        self.source = source
        self.refresh = refresh
        self._spaces: dict[str, dict[str, ParamInfo]] = {}
        self._lock = threading.Lock()

    def space(self, exp_key: str) -> dict[str, ParamInfo]:
        with self._lock:
            if exp_key not in self._spaces:
                found = self.source.space(exp_key)
                if not found:  # the driver may not have stored it yet: try again next time
                    return {}
                self._spaces[exp_key] = found
            return self._spaces[exp_key]

    # -- endpoints (plain functions: Starlette runs them in its thread pool) ---------------------
    def page(self, request: Request) -> HTMLResponse:
        html = (
            environment()
            .get_template("dashboard.html.j2")
            .render(where=self.source.shown, refresh=self.refresh)
        )
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    def plotly(self, request: Request) -> Response:
        return Response(
            plotly_js(), media_type="text/javascript", headers={"Cache-Control": "public, max-age=3600"}
        )

    def status(self, request: Request) -> JSONResponse:
        src = self.source
        out: dict[str, Any] = {"server": {"address": src.shown, "up": False}}
        try:
            src.check()
            now = src.now()
            out["server"].update(up=True, now=now.isoformat(timespec="seconds") + "Z")
            queue: dict[str, int] = defaultdict(int)
            for doc in src.jobs.find({}, projection=["state"]):
                queue[STATE_NAMES.get(doc.get("state"), "new")] += 1
            out["queue"] = dict(queue)
            out["hosts"] = hosts = worker_rows(src.workers(), now)
            rows = [w for ws in hosts.values() for w in ws]
            out["workers_alive"] = sum(w["state"] in ("busy", "idle") for w in rows)
            out["workers_gone"] = len(rows) - out["workers_alive"]
        except (pymongo.errors.PyMongoError, PyhoptclusterError, OSError) as exc:
            out["server"]["error"] = str(exc)
        out["html"] = environment().get_template("status.html.j2").render(**out)
        return JSONResponse(out, headers={"Cache-Control": "no-store"})

    def experiments(self, request: Request) -> JSONResponse:
        try:
            rows = [
                {
                    "exp_key": e.exp_key,
                    "trials": e.trials,
                    "counts": e.counts,
                    "last_change": e.last_change.isoformat(timespec="seconds") + "Z"
                    if e.last_change
                    else None,
                }
                for e in self.source.experiments()
            ]
        except pymongo.errors.PyMongoError as exc:
            return JSONResponse({"experiments": [], "error": str(exc)}, headers={"Cache-Control": "no-store"})
        return JSONResponse({"experiments": rows}, headers={"Cache-Control": "no-store"})

    def experiment(self, request: Request) -> JSONResponse:
        exp_key = request.query_params.get("exp_key", "")
        try:
            docs = self.source.job_docs(exp_key)
            exp = experiment(exp_key, docs, self.space(exp_key), now=self.source.now())
        except pymongo.errors.PyMongoError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
        env = environment()
        figures = {name: json.loads(fig.to_json()) for name, fig in all_figures(exp).items()}
        s = exp.summary
        return JSONResponse(
            {
                "exp_key": exp_key,
                "summary": {
                    "trials": s.trials,
                    "counts": s.counts,
                    "best_loss": s.best_loss,
                    "best_tid": s.best_tid,
                    "wall_seconds": s.wall_seconds,
                    "workers": s.workers,
                    "utilisation_percent": s.utilisation_percent,
                },
                "facts_html": env.get_template("facts.html.j2").render(s=s),
                "tables_html": env.get_template("tables.html.j2").render(exp=exp),
                "figures": figures,
            },
            headers={"Cache-Control": "no-store"},
        )


def create_app(source: Source, refresh: float = 2.0) -> Starlette:
    dash = Dashboard(source, refresh)
    routes = [
        Route("/", dash.page),
        Route("/plotly.min.js", dash.plotly),
        Route("/api/status", dash.status),
        Route("/api/experiments", dash.experiments),
        Route("/api/experiment", dash.experiment),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=[BIND, "localhost"])]
    return Starlette(routes=routes, middleware=middleware)


def serve(source: Source, port: int = 8050, refresh: float = 2.0) -> None:
    """Serve the dashboard on http://127.0.0.1:PORT/ until interrupted (Ctrl-C)."""
    print(f"pyhoptcluster dashboard of {source.shown}: http://{BIND}:{port}/ (Ctrl-C stops it)", flush=True)
    uvicorn.run(create_app(source, refresh), host=BIND, port=port, log_level="warning", access_log=False)
