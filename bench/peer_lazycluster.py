"""The peer of bench/deploy.py: lazycluster 0.2.4's HyperoptCluster on the same test hosts.

Run by deploy.py with the Python of a venv holding lazycluster 0.2.4, hyperopt 0.3.0 and pymongo 3.13
(the pairing lazycluster works with; DESIGN.md's recipe), never imported by the project. lazycluster
runs ``mongod --fork ...`` on the control node and ``mongod --shutdown --dbpath=...`` to stop it, so
deploy.py puts a stand-in named ``mongod`` first on PATH (this file, run with ``mongod`` as argv[1]):
it starts SecantusDB with those flags, waits for a ping, and stops it by the pid it wrote. On the hosts
lazycluster runs ``hyperopt-mongo-worker`` over ssh (deploy.py installs it there first).

Usage: ``python peer_lazycluster.py '<json>'`` with hosts (``root@ip``), key, workers, trials,
objective seconds, max_queue_len and port; prints one JSON object: start, cleanup, restart (start()
after cleanup(): a notebook's daily cycle), trials_per_s and utilisation.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def _mongod_standin(argv: list[str]) -> int:
    """``mongod --fork --logpath=L --dbpath=D --port=P`` / ``mongod --shutdown --dbpath=D``."""
    opts = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    dbpath = Path(opts.get("dbpath", "None")).resolve()  # lazycluster's default passes 'None'
    pidfile = dbpath / "standin.pid"
    if "--shutdown" in argv:
        if not pidfile.is_file():
            return 0
        pid = int(pidfile.read_text())
        try:
            os.kill(pid, signal.SIGTERM)
            while True:
                os.kill(pid, 0)
                time.sleep(0.05)
        except ProcessLookupError:
            pass
        pidfile.unlink()
        return 0
    import pymongo  # the peer venv's pymongo 3.13

    dbpath.mkdir(parents=True, exist_ok=True)
    port = int(opts.get("port", "27017"))
    with open(opts.get("logpath", dbpath / "mongod.log"), "ab") as log:
        proc = subprocess.Popen(
            [os.environ["PEER_SECANTUSD"], "--host", "127.0.0.1", "--port", str(port), "--storage-path",
             str(dbpath / "db"), "--standalone"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
    pidfile.write_text(str(proc.pid))
    client = pymongo.MongoClient("127.0.0.1", port, serverSelectionTimeoutMS=30000)
    client.admin.command("ping")
    return 0


def _objective(seconds: float):
    def objective(x: float) -> float:
        time.sleep(seconds)
        return x * x

    return objective


def main(args: dict) -> dict:
    from hyperopt import fmin, hp, tpe
    from hyperopt.mongoexp import MongoTrials
    from lazycluster import Runtime, RuntimeGroup
    from lazycluster.cluster.hyperopt_cluster import HyperoptCluster

    runtimes = [Runtime(h, connection_kwargs={"key_filename": args["key"]}) for h in args["hosts"]]
    group = RuntimeGroup(runtimes=runtimes)
    out: dict = {}

    def start() -> HyperoptCluster:
        cluster = HyperoptCluster(group)
        cluster.start(worker_count=args["workers"], master_port=args["port"])
        return cluster

    t0 = time.perf_counter()
    cluster = start()
    out["start"] = time.perf_counter() - t0
    trials = MongoTrials(cluster.mongo_trial_url, exp_key="peer")
    t0 = time.perf_counter()
    fmin(
        _objective(args["objective"]),
        hp.uniform("x", -5, 5),
        algo=tpe.suggest,
        max_evals=args["trials"],
        trials=trials,
        max_queue_len=args["max_queue_len"],
        show_progressbar=False,
    )
    wall = time.perf_counter() - t0
    trials.refresh()
    docs = [t for t in trials.trials if t["state"] == 2]
    span = (max(t["refresh_time"] for t in docs) - min(t["book_time"] for t in docs)).total_seconds()
    out["trials_per_s"] = len(docs) / wall
    out["utilisation"] = len(docs) * args["objective"] / (args["workers"] * span)
    out["done"] = len(docs)
    t0 = time.perf_counter()
    cluster.cleanup()
    out["cleanup"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    cluster = start()
    out["restart"] = time.perf_counter() - t0
    cluster.cleanup()
    group.cleanup()
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "mongod":
        sys.exit(_mongod_standin(sys.argv[2:]))
    result = main(json.loads(sys.argv[1]))
    print("PEER " + json.dumps(result), flush=True)
