"""The cluster's database seen from the control node: its status (``pyhoptcluster status``,
``HyperoptCluster.status()``), the experiments, and deleting one (``pyhoptcluster experiments`` and
``delete``, ``HyperoptCluster.experiments()`` and ``delete_experiment()``), like ``optuna studies``
and ``delete-study``. The numbers are :mod:`pyhoptcluster.control.status`'s; deleting is hyperopt's own
``MongoTrials.delete_all`` (the jobs, their GridFS attachments and the experiment's attachments, such
as the pickled domain). Control side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pymongo

from pyhoptcluster.control.state import JOBS_COLLECTION, ClusterInfo
from pyhoptcluster.control.status import (
    ClusterStatus,
    ExperimentStatus,
    placed_from_records,
    read_experiments,
    read_status,
)

SERVER_TIMEOUT_MS = 10000


def connect(info: ClusterInfo) -> pymongo.MongoClient:
    """A client of the cluster ``info`` describes, as the experiment user (close it after use)."""
    return pymongo.MongoClient(info.pymongo_uri(), serverSelectionTimeoutMS=SERVER_TIMEOUT_MS)


def cluster_status(info: ClusterInfo) -> ClusterStatus:
    """Server, every placed worker (the published placement, else the live records), every experiment."""
    with connect(info) as client:
        placement = info.workers or placed_from_records(client, info.dbname)
        return read_status(client, info.dbname, placement, f"{info.server_host}:{info.server_port}")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m" if seconds < 7200 else f"{seconds / 3600:.1f}h"


def status_text(status: ClusterStatus) -> str:
    """The status as a terminal shows it: the server line, a worker table, the experiment table."""
    srv = status.server
    if srv.up:
        size = "-" if srv.data_size is None else f"{srv.data_size / 1e6:.1f} MB"
        version, uptime = srv.version or "?", _age(srv.uptime_s)
        head = f"server {srv.address}: up, version {version}, uptime {uptime}, data {size}"
    else:
        head = f"server {srv.address}: DOWN ({srv.error})"
    rows = [
        [
            "host",
            "worker",
            "state",
            "pid",
            "uptime",
            "restarts",
            "trial",
            "done",
            "failed",
            "heartbeat",
            "gpus",
        ]
    ]
    for w in status.workers:
        rows.append(
            [
                w.host,
                str(w.instance),
                w.state,
                str(w.pid or "-"),
                _age(w.uptime_s),
                str(w.restarts),
                "-" if w.current_trial is None else str(w.current_trial),
                str(w.trials_done),
                str(w.trials_failed),
                "-" if w.last_heartbeat_s is None else f"{_age(w.last_heartbeat_s)} ago",
                w.gpus or "-",
            ]
        )
    width = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    workers = "\n".join("  ".join(f"{c:<{n}}" for c, n in zip(r, width, strict=True)).rstrip() for r in rows)
    exps = table(status.experiments) if status.experiments else "no experiments"
    return f"{head}\n\n{workers if status.workers else 'no workers placed'}\n\n{exps}"


def list_experiments(info: ClusterInfo) -> list[ExperimentStatus]:
    with connect(info) as client:
        return read_experiments(client, info.dbname)


def count_trials(info: ClusterInfo, exp_key: str) -> int:
    with connect(info) as client:
        return int(client[info.dbname][JOBS_COLLECTION].count_documents({"exp_key": exp_key}))


def delete_experiment(info: ClusterInfo, exp_key: str) -> int:
    """Delete every trial of ``exp_key`` with its attachments; returns how many trials there were."""
    if not isinstance(exp_key, str) or not exp_key:
        raise ValueError(f"exp_key must be a non-empty string, got {exp_key!r} (an empty one means all)")
    from hyperopt.mongoexp import MongoTrials

    import pyhoptcluster  # noqa: F401 - hyperopt's Mongo mode on pymongo 4

    n = count_trials(info, exp_key)
    trials = MongoTrials(info.mongo_url(collection=JOBS_COLLECTION), exp_key=exp_key)
    try:
        trials.delete_all()
    finally:
        trials.handle.conn.close()
    return n


def table(experiments: Sequence[ExperimentStatus]) -> str:
    """exp_key, trials by state, best loss: one row per experiment."""
    states = ["new", "running", "done", "error", "cancelled"]
    seen = [s for s in states if any(e.trials.get(s) for e in experiments)] or ["done"]
    rows = [["exp_key", "trials", *seen, "stale", "best loss"]]
    for e in experiments:
        best = "-" if e.best_loss is None or math.isnan(e.best_loss) else f"{e.best_loss:.6g}"
        rows.append(
            [
                "(none)" if e.exp_key is None else str(e.exp_key),
                str(sum(e.trials.values())),
                *[str(e.trials.get(s, 0)) for s in seen],
                str(e.stale),
                best,
            ]
        )
    width = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(f"{c:<{w}}" for c, w in zip(r, width, strict=True)).rstrip() for r in rows)
