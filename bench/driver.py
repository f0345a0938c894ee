"""Driver benchmark: push vs poll, and the driver's cost as an experiment grows.

Prints, from one run on this machine, with throwaway SecantusDB servers (no auth, loopback) and
real ``pyhoptcluster-worker`` processes:

  * the gap between one trial's result and the next trial's start with 1 worker and
    ``max_queue_len=1`` (driver wake + suggest + insert + worker wake), p50 and p90, on a server with
    change streams (push) and on a ``--standalone`` one (stock polling: the driver's 1 s, the
    worker's 0.1 s) — targets: p50 <= 20 ms of queued-to-started with push;
  * utilisation of 4 workers with a 0.25 s objective and plain settings (``max_queue_len`` = 4,
    no poll tuning) on both servers — target >= 90 % with push;
  * the dispatch rate (trials/s from the job documents) in each window of 1,000 trials of a long
    ``rand.suggest`` run of a trivial objective on 4 workers — target: the last window >= 80 % of
    the first.

The utilisation of 4 workers against the objective's time (0.05-2 s, push and poll) is written to
``bench/out/driver_utilisation.png``, the per-window rate of the long run to
``bench/out/driver_windows.png`` (bench/curves.py).

Usage: ``python bench/driver.py [--trials 10000] [--gap-trials 60] [--util-trials 80]
[--objectives 0.05 0.1 0.25 0.5 1 2]``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cloudpickle
import pymongo
from curves import write_curve  # bench/ is sys.path[0] when run as a script
from hyperopt import fmin, hp, rand
from hyperopt.mongoexp import MongoTrials

import pyhoptcluster  # noqa: F401  (patches hyperopt.mongoexp: pymongo 4, push, refresh)

SPACE = hp.uniform("x", -5, 5)
WORKER = Path(sys.executable).with_name("pyhoptcluster-worker")


def trivial(x: float) -> float:
    return x * x


def quarter_second(x: float) -> float:
    time.sleep(0.25)
    return x * x


def sleeping(seconds: float):
    def objective(x: float) -> float:
        time.sleep(seconds)
        return x * x

    return objective


cloudpickle.register_pickle_by_value(sys.modules[__name__])


class Server:
    def __init__(self, standalone: bool) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-driver-"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        secantusd = os.environ.get("PYHOPTCLUSTER_SECANTUSD") or str(
            Path("~/.local/share/pyhoptcluster/secantusdb-venv/bin/secantusd-py").expanduser()
        )
        argv = [
            secantusd,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--storage-path",
            str(self.tmp / "db"),
        ]
        if standalone:
            argv.append("--standalone")
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.client = pymongo.MongoClient(
            "127.0.0.1", self.port, directConnection=True, serverSelectionTimeoutMS=30000
        )
        self.client.admin.command("ping")
        self.url = f"mongo://127.0.0.1:{self.port}/bench/jobs"
        self.workers: list[subprocess.Popen[bytes]] = []

    def start_workers(self, n: int, exp_key: str) -> None:
        conf = self.tmp / f"{exp_key}.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"HYPEROPT_WORKER_MONGO_URL={self.url}\nHYPEROPT_WORKER_EXP_KEY={exp_key}\n")
        for i in range(n):
            self.workers.append(
                subprocess.Popen(
                    [str(WORKER), "--config", str(conf), "--instance", str(i), "--log-level", "WARNING"],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    cwd=self.tmp,
                )
            )
        time.sleep(3)  # the workers import hyperopt before they ask for jobs

    def stop_workers(self) -> None:
        for p in self.workers:
            p.send_signal(signal.SIGTERM)
        for p in self.workers:
            p.wait(timeout=60)
        self.workers.clear()

    def jobs(self, exp_key: str) -> list[dict]:
        return list(self.client.bench.jobs.find({"exp_key": exp_key, "state": 2}, sort=[("book_time", 1)]))

    def close(self) -> None:
        self.stop_workers()
        self.client.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)
        shutil.rmtree(self.tmp, ignore_errors=True)


def run(server: Server, exp_key: str, fn, n: int, queue: int, workers: int) -> list[dict]:
    server.start_workers(workers, exp_key)
    try:
        fmin(
            fn,
            SPACE,
            algo=rand.suggest,
            max_evals=n,
            trials=MongoTrials(server.url, exp_key=exp_key),
            max_queue_len=queue,
            show_progressbar=False,
        )
    finally:
        server.stop_workers()
    return server.jobs(exp_key)


def gaps_ms(jobs: list[dict]) -> list[float]:
    return [(b["book_time"] - a["refresh_time"]).total_seconds() * 1000 for a, b in itertools.pairwise(jobs)]


def utilisation(jobs: list[dict], workers: int) -> float:
    busy = sum((j["refresh_time"] - j["book_time"]).total_seconds() for j in jobs)
    span = (jobs[-1]["refresh_time"] - jobs[0]["book_time"]).total_seconds()
    return busy / (workers * span)


def windows(jobs: list[dict], size: int = 1000) -> list[float]:
    rates = []
    for i in range(0, len(jobs) - size + 1, size):
        chunk = jobs[i : i + size]
        span = (chunk[-1]["refresh_time"] - chunk[0]["book_time"]).total_seconds()
        rates.append(size / span)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--trials", type=int, default=10000)
    parser.add_argument("--gap-trials", type=int, default=60)
    parser.add_argument("--util-trials", type=int, default=80)
    parser.add_argument("--objectives", type=float, nargs="+", default=[0.05, 0.1, 0.25, 0.5, 1.0, 2.0])
    args = parser.parse_args()
    rows = []
    curve: dict[str, list[tuple[float, float]]] = {}
    for name, standalone in (("push (replica set)", False), ("poll (--standalone)", True)):
        server = Server(standalone)
        try:
            gaps = gaps_ms(run(server, "gap", trivial, args.gap_trials, 1, 1))
            util = utilisation(run(server, "util", quarter_second, args.util_trials, 4, 4), 4)
            q = statistics.quantiles(gaps, n=10)
            rows.append((name, statistics.median(gaps), q[8], util))
            points = curve.setdefault(name, [])
            for seconds in args.objectives:  # 4 trials per worker, at least 4 s of work per point
                n = 4 * max(4, round(4 / seconds))
                jobs = run(server, f"util-{seconds}", sleeping(seconds), n, 4, 4)
                points.append((seconds, 100 * utilisation(jobs, 4)))
        finally:
            server.close()
    print(f"\n{'server':22} {'gap p50 ms':>10} {'gap p90 ms':>10} {'util 4 workers':>15}")
    for name, p50, p90, util in rows:
        print(f"{name:22} {p50:10.1f} {p90:10.1f} {util:15.0%}")
    print("\nutilisation of 4 workers, max_queue_len=4, by objective seconds:")
    for name, points in curve.items():
        print(f"  {name:22} " + "  ".join(f"{s:g} s: {u:.0f} %" for s, u in points))
    write_curve(
        "driver_utilisation",
        "Utilisation of 4 workers against objective time (max_queue_len=4, no poll tuning)",
        "objective seconds",
        "utilisation %",
        curve,
        baselines={"target 90 %": 90.0},
        log_x=True,
    )

    if args.trials >= 2000:
        server = Server(standalone=False)
        try:
            t0 = time.perf_counter()
            jobs = run(server, "long", trivial, args.trials, 8, 4)
            wall = time.perf_counter() - t0
        finally:
            server.close()
        rates = windows(jobs)
        print(f"\n{args.trials} trials on 4 workers in {wall:.0f} s; trials/s per 1,000-trial window:")
        print("  " + " ".join(f"{r:.1f}" for r in rates))
        print(f"  last window / first: {rates[-1] / rates[0]:.0%}")
        write_curve(
            "driver_windows",
            f"Dispatch rate per 1,000-trial window ({args.trials} trials, 4 workers, rand.suggest)",
            "trials so far",
            "trials/s",
            {"push": [(1000 * (i + 1), r) for i, r in enumerate(rates)]},
            baselines={"80 % of the first window": 0.8 * rates[0]},
        )


if __name__ == "__main__":
    main()
