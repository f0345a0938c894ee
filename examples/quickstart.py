"""A small distributed experiment on the local cluster (inventories/local).

Run it with `bash scripts/quickstart.sh` (installs everything first) or, with pyhoptcluster
installed, `python examples/quickstart.py [--keep]`.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from hyperopt import fmin, hp, tpe
from hyperopt.mongoexp import MongoTrials

from pyhoptcluster import HyperoptCluster

INVENTORY = Path(__file__).resolve().parent.parent / "inventories" / "local"


def objective(x: float) -> float:
    return (x - 3.0) ** 2 + math.sin(5 * x)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="leave the cluster running")
    args = parser.parse_args()

    cluster = HyperoptCluster(INVENTORY)
    cluster.start(worker_count=args.workers)
    try:
        print("server:", cluster.info.mongo_url(with_password=False))
        print("workers per host:", cluster.workers_per_host)
        trials = MongoTrials(cluster.mongo_trial_url, exp_key="quickstart")
        trials.delete_all()
        best = fmin(
            objective,
            hp.uniform("x", -10, 10),
            algo=tpe.suggest,
            max_evals=args.trials,
            trials=trials,
            max_queue_len=args.workers,
            show_progressbar=False,
        )
        owners = sorted({str(t["owner"]) for t in trials.trials})
        done = sum(1 for t in trials.trials if t["result"].get("status") == "ok")
        print(
            f"{done}/{len(trials.trials)} trials ok, best x={best['x']:.4f}, "
            f"loss={min(trials.losses()):.4f}, evaluated by {owners}"
        )
    finally:
        if not args.keep:
            cluster.cleanup()
            print("cluster stopped")


if __name__ == "__main__":
    main()
