"""Dispatch benchmark: trials per second of hyperopt on the local cluster.

Prints, from one run on this machine:
  * in-process ``Trials()`` (no server, no workers) — the upper bound of hyperopt itself;
  * the server's raw reservation rate: ``find_one_and_update`` from one client, the ceiling of any
    Mongo-mode worker pool;
  * pyhoptcluster's workers (inventories/local) with 1, 2, 4, 8, 16 workers, 200 trials of a trivial
    objective (the queue holds them all, so the driver never waits for a slot);
  * stock hyperopt worker settings (one interpreter per job, sleep uniform(1, 5 s), fmin
    max_queue_len=1) on a throwaway auth-less server, fewer trials because it is slow.

Worker throughput is measured from the job documents (first ``book_time`` to last
``refresh_time``), so the driver's 1 s poll does not hide it; the driver's wall-clock rate is printed
beside it. The curve of both against the worker count, with the server's raw rate as the baseline, is
written to ``bench/out/dispatch_workers.png`` (bench/curves.py). Usage: ``python bench/dispatch.py
[--trials 200] [--workers 1 2 4 8 16] [--stock-trials 12]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cloudpickle
import pymongo
from curves import write_curve  # bench/ is sys.path[0] when run as a script
from hyperopt import Trials, fmin, hp, rand
from hyperopt.mongoexp import MongoTrials

from pyhoptcluster import HyperoptCluster  # importing it patches hyperopt.mongoexp for pymongo 4

ROOT = Path(__file__).resolve().parent.parent
SPACE = hp.uniform("x", -5, 5)


def objective(x: float) -> float:
    return x * x


# Workers cannot import this file: pickle its functions by value (as for a script's __main__).
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def bench_in_process(n: int) -> float:
    t0 = time.perf_counter()
    fmin(objective, SPACE, algo=rand.suggest, max_evals=n, trials=Trials(), show_progressbar=False)
    return _rate(n, time.perf_counter() - t0)


def bench_raw_reservations(url: str, n: int = 300) -> float:
    client = pymongo.MongoClient(url)
    coll = client.get_default_database()["bench_raw_reserve"]
    coll.drop()
    coll.insert_many([{"state": 0, "owner": None, "i": i} for i in range(n)])
    t0 = time.perf_counter()
    for _ in range(n):
        doc = coll.find_one_and_update(
            {"state": 0, "owner": None},
            {"$set": {"state": 1, "owner": "bench"}},
            return_document=pymongo.ReturnDocument.AFTER,
        )
        assert doc is not None
    rate = _rate(n, time.perf_counter() - t0)
    coll.drop()
    client.close()
    return rate


def worker_span(trials: MongoTrials) -> tuple[int, float]:
    """(finished trials, seconds from the first reservation to the last result) from the job documents."""
    docs = [t for t in trials.trials if t["state"] == 2]
    first = min(t["book_time"] for t in docs)
    last = max(t["refresh_time"] for t in docs)
    return len(docs), (last - first).total_seconds()


def _worker_side_rate(trials: MongoTrials) -> float:
    return _rate(*worker_span(trials))


def run_fmin(
    url: str,
    exp_key: str,
    n: int,
    max_queue_len: int,
    fn=objective,
    poll_interval: float | None = None,
    algo=rand.suggest,
) -> tuple[MongoTrials, float]:
    """fmin of ``n`` trials of ``fn`` through MongoTrials; (the refreshed trials, driver wall seconds).
    ``poll_interval``: the driver's poll (``trials.poll_interval_secs``), hyperopt's 1 s if None."""
    trials = MongoTrials(url, exp_key=exp_key)
    if poll_interval is not None:
        trials.poll_interval_secs = poll_interval
    trials.delete_all()
    t0 = time.perf_counter()
    fmin(
        fn,
        SPACE,
        algo=algo,
        max_evals=n,
        trials=trials,
        max_queue_len=max_queue_len,
        show_progressbar=False,
    )
    wall = time.perf_counter() - t0
    trials.refresh()
    done = sum(1 for t in trials.trials if t["state"] == 2)
    if done != n:
        raise RuntimeError(f"{exp_key}: only {done}/{n} trials finished")
    return trials, wall


def run_experiment(url: str, exp_key: str, n: int, max_queue_len: int) -> tuple[float, float]:
    trials, wall = run_fmin(url, exp_key, n, max_queue_len)
    rate = _worker_side_rate(trials)
    trials.delete_all()
    return rate, _rate(n, wall)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_stock(n: int, workers: int) -> tuple[float, float]:
    """Stock hyperopt-mongo-worker settings, on a throwaway server without auth (so no password
    ever reaches a command line), the workers patched only for pymongo 4."""
    secantusd = os.environ.get("PYHOPTCLUSTER_SECANTUSD") or str(
        Path("~/.local/share/pyhoptcluster/secantusdb-venv/bin/secantusd-py").expanduser()
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench-stock-"))
    port = free_port()
    server = subprocess.Popen(
        [
            secantusd,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--storage-path",
            str(tmp / "db"),
            "--standalone",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        client = pymongo.MongoClient("127.0.0.1", port, serverSelectionTimeoutMS=30000)
        client.admin.command("ping")
        # Stock defaults: poll 5 s, a new process per job (main_worker_helper re-runs sys.argv[0] for
        # each job), so the wrapper is a script that applies only the pymongo-4 patch.
        wrapper = tmp / "hyperopt-stock-worker"
        wrapper.write_text(
            f"#!{sys.executable}\nimport pyhoptcluster\nfrom hyperopt.mongoexp import main\nmain()\n"
        )
        wrapper.chmod(0o755)
        for _ in range(workers):
            procs.append(
                subprocess.Popen(
                    [str(wrapper), f"--mongo=127.0.0.1:{port}/bench", "--poll-interval=5"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    cwd=tmp,  # stock MongoWorker writes logfile.txt into its working directory
                )
            )
        time.sleep(1)
        dead = [p.args for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"stock workers exited at start: {dead}")
        return run_experiment(f"mongo://127.0.0.1:{port}/bench/jobs", "stock", n, max_queue_len=1)
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            p.wait(timeout=30)
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--stock-trials", type=int, default=12)
    parser.add_argument("--inventory", default=str(ROOT / "inventories" / "local"))
    args = parser.parse_args()

    rows: list[tuple[str, float, float | None]] = []
    curve: dict[str, list[tuple[float, float]]] = {"workers (job documents)": [], "driver wall clock": []}
    rows.append(("in-process Trials()", bench_in_process(args.trials), None))

    cluster = HyperoptCluster(args.inventory)
    t0 = time.perf_counter()
    cluster.start_master(master_port=list(range(27117, 27140)), timeout=30)
    print(f"start_master: {time.perf_counter() - t0:.1f} s", flush=True)
    try:
        raw = bench_raw_reservations(cluster.info.pymongo_uri())
        rows.append(("server raw find_one_and_update (1 client)", raw, None))
        for k in args.workers:
            t0 = time.perf_counter()
            cluster.start_workers(k)
            print(f"start_workers({k}): {time.perf_counter() - t0:.1f} s", flush=True)
            rate, wall = run_experiment(cluster.mongo_trial_url, f"bench-{k}", args.trials, args.trials)
            rows.append((f"pyhoptcluster, {k} worker(s), {args.trials} trials", rate, wall))
            curve["workers (job documents)"].append((k, rate))
            curve["driver wall clock"].append((k, wall))
    finally:
        t0 = time.perf_counter()
        cluster.cleanup()
        print(f"cleanup: {time.perf_counter() - t0:.1f} s", flush=True)

    rate, wall = bench_stock(args.stock_trials, workers=2)
    rows.append((f"stock worker settings, 2 workers, {args.stock_trials} trials", rate, wall))

    print()
    print(f"{'setup':58} {'trials/s':>9} {'driver wall':>12} {'vs raw':>7}")
    for name, rate, wall in rows:
        wall_s = f"{wall:9.2f}/s" if wall is not None else ""
        print(f"{name:58} {rate:9.2f} {wall_s:>12} {rate / raw:7.0%}")
    write_curve(
        "dispatch_workers",
        f"Trials/s against workers ({args.trials} trivial trials, local cluster)",
        "workers",
        "trials/s",
        curve,
        baselines={f"server raw reservations {raw:.0f}/s": raw},
        log_x=True,
    )


if __name__ == "__main__":
    main()
