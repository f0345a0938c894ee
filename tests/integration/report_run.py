"""A real experiment for the report tests: real workers, a real fmin, a real stale-trial reclaim.

:func:`run_experiment` runs ``objectives.report_objective`` over :data:`SPACE` (uniform, loguniform,
hp.choice, quniform) on ``n_workers`` real ``pyhoptcluster-worker`` processes; with ``freeze=True``
the first trial freezes its worker (SIGSTOP), the other workers' sweep puts it back in the queue, and
the frozen worker is killed by its pid at the end. Some trials raise (``kind == "poly"`` and x > 2.5,
and the first "poly" trial).

Run as a script, it records such a run into the JSON the unit tests read (extended JSON, the job
documents and the worker records as the server holds them)::

    .venv/bin/python tests/integration/report_run.py tests/unit/data/report_run.json
"""

from __future__ import annotations

import math
import os
import signal
import sys
from pathlib import Path
from typing import Any

from hyperopt import fmin, hp, tpe
from hyperopt.mongoexp import MongoTrials
from worker_procs import Workers, objectives, write_config

FAST_LEASE = {"HEARTBEAT": "0.5", "HEARTBEAT_GRACE": "2", "POLL_INTERVAL": "0.05"}
SPACE = {
    "x": hp.uniform("x", -5, 5),
    "lr": hp.loguniform("lr", math.log(1e-5), 0.0),
    "kind": hp.choice("kind", ["linear", "rbf", "poly"]),
    "depth": hp.quniform("depth", 1, 8, 1),
}
CHOICES = ("linear", "rbf", "poly")


def start_workers(
    pool: Workers, tmp: Path, url: str, exp_key: str, n: int, mark: Path | None, sleep: float = 0.0
) -> list:
    env = {"PYHOPTCLUSTER_TEST_MARK": str(mark)} if mark else {}
    env["PYHOPTCLUSTER_TEST_SLEEP"] = str(sleep)
    env["PYHOPTCLUSTER_TEST_ERROR_MARK"] = str(tmp / f"error-{exp_key}")  # an error trial in every run
    procs = []
    for i in range(1, n + 1):
        config = write_config(
            tmp / f"report-worker-{exp_key}-{i}.conf", MONGO_URL=url, EXP_KEY=exp_key, **FAST_LEASE
        )
        procs.append(pool.start(config, str(i), env=env))
    return procs


def run_fmin(url: str, exp_key: str, n: int, queue: int, fn: Any = None) -> MongoTrials:
    trials = MongoTrials(url, exp_key=exp_key)
    trials.poll_interval_secs = 0.2
    fmin(
        fn or objectives.report_objective,
        SPACE,
        algo=tpe.suggest,
        max_evals=n,
        trials=trials,
        max_queue_len=queue,
        show_progressbar=False,
        return_argmin=False,
    )
    return trials


def kill_frozen(procs: list, jobs: list[dict]) -> None:
    """SIGKILL (by pid) the workers the sweep gave up on: they froze themselves and stay stopped."""
    lost = {str(r.get("owner")) for d in jobs for r in d.get("reclaims") or ()}
    for p in procs:
        if p.owner in lost and p.proc.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            p.proc.wait(timeout=10)


def run_experiment(
    pool: Workers,
    tmp: Path,
    url: str,
    client: Any,
    exp_key: str,
    n: int = 60,
    n_workers: int = 3,
    freeze: bool = True,
) -> tuple[list[dict], list[dict]]:
    """The job documents and worker records of a finished real run."""
    mark = tmp / f"freeze-{exp_key}" if freeze else None
    procs = start_workers(pool, tmp, url, exp_key, n_workers, mark)
    try:
        run_fmin(url, exp_key, n, n_workers)
    finally:
        jobs = list(client.hyperopt.jobs.find({"exp_key": exp_key}, sort=[("tid", 1)]))
        kill_frozen(procs, jobs)
    for p in procs:
        if p.proc.poll() is None:
            p.stop()
    owners = {p.owner for p in procs}
    return jobs, [w for w in client.hyperopt.workers.find({}) if w["_id"] in owners]


def main(out: str) -> int:
    import tempfile

    from bson import json_util
    from conftest import SecantusdFactory, find_secantusd

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        factory, pool = SecantusdFactory(find_secantusd(), tmp), Workers(tmp)
        try:
            server = factory.start(auth_user="pyhoptcluster", dbname="hyperopt")
            with server.client() as client:
                jobs, workers = run_experiment(pool, tmp, server.trials_url(), client, "recorded", n=60)
        finally:
            pool.close()
            factory.close()
    for doc in jobs:  # what the report never reads, to keep the file small
        doc.pop("spec", None)
        doc.get("misc", {}).pop("idxs", None)
    Path(out).write_text(json_util.dumps({"jobs": jobs, "workers": workers}, indent=1) + "\n")
    print(f"{len(jobs)} jobs, {len(workers)} workers -> {out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main(sys.argv[1]))
