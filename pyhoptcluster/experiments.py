"""Experiments in the cluster's database: list them, delete one (``pyhoptcluster experiments`` and
``delete``, ``HyperoptCluster.experiments()`` and ``delete_experiment()``), like ``optuna studies``
and ``delete-study``. The numbers are :mod:`pyhoptcluster.status`'s; deleting is hyperopt's own
``MongoTrials.delete_all`` (the jobs, their GridFS attachments and the experiment's attachments, such
as the pickled domain). Control side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pymongo

from .state import JOBS_COLLECTION, ClusterInfo
from .status import ExperimentStatus, read_experiments

SERVER_TIMEOUT_MS = 10000


def _client(info: ClusterInfo) -> pymongo.MongoClient:
    return pymongo.MongoClient(info.pymongo_uri(), serverSelectionTimeoutMS=SERVER_TIMEOUT_MS)


def list_experiments(info: ClusterInfo) -> list[ExperimentStatus]:
    with _client(info) as client:
        return read_experiments(client, info.dbname)


def count_trials(info: ClusterInfo, exp_key: str) -> int:
    with _client(info) as client:
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
