"""Fault benchmark: how fast the cluster recovers, and what the heartbeats cost.

Prints, from one run on this machine:
  * dispatch with heartbeats off (``HYPEROPT_WORKER_HEARTBEAT=0``), at the default 10 s, and at an
    aggressive 1 s: worker-side trials/s of 2 workers over the same trivial trials, rounds
    interleaved, each as a ratio of "off" (target: overhead <= 5 %);
  * ``kill -9`` of a worker mid-trial with no other worker alive: seconds until the fmin driver's
    sweep put the trial back in the queue, and until it was DONE on a worker started then
    (heartbeat 1 s, grace 5 s: the floor is the grace);
  * with ``--cluster``: the local cluster (inventories/local, a private state dir) brought up by
    ``HyperoptCluster``: seconds from ``kill -9`` of a worker until supervisord runs a new one, and
    from ``kill -9`` of the server until a new one answers ping (pids from the cluster's supervisord).

The server of the first two parts is a throwaway SecantusDB without auth on a free loopback port;
every process is stopped by its pid. Usage: ``python bench/faults.py [--trials 200] [--rounds 2]
[--cluster]``.
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
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cloudpickle
import pymongo
from hyperopt import fmin, hp, rand
from hyperopt.mongoexp import MongoTrials

import pyhoptcluster  # noqa: F401  (patches hyperopt.mongoexp: pymongo 4, sweep, outage retries)

ROOT = Path(__file__).resolve().parent.parent
SPACE = hp.uniform("x", -5, 5)
WORKER = Path(sys.executable).with_name("pyhoptcluster-worker")


def objective(x: float) -> float:
    return x * x


def gated(x: float) -> float:
    """Blocks until $BENCH_GATE exists (the trial a worker is killed in)."""
    while not os.path.exists(os.environ["BENCH_GATE"]):
        time.sleep(0.05)
    return x * x


cloudpickle.register_pickle_by_value(sys.modules[__name__])


def wait_for(cond: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    raise RuntimeError(f"timed out after {timeout} s waiting for {what}")


class Bed:
    """A throwaway server and the worker processes started against it."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-faults-"))
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
        self.server = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.client = pymongo.MongoClient("127.0.0.1", self.port, serverSelectionTimeoutMS=30000)
        self.client.admin.command("ping")
        self.url = f"mongo://127.0.0.1:{self.port}/bench/jobs"
        self.workers: list[subprocess.Popen[bytes]] = []

    def worker(self, name: str, env: dict[str, str] | None = None, **keys: str) -> subprocess.Popen[bytes]:
        conf = self.tmp / f"{name}.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            for key, value in {"MONGO_URL": self.url, "POLL_INTERVAL": "0.05", **keys}.items():
                f.write(f"HYPEROPT_WORKER_{key}={value}\n")
        proc = subprocess.Popen(
            [str(WORKER), "--config", str(conf), "--instance", name, "--log-level", "WARNING"],
            stdin=subprocess.DEVNULL,
            stdout=open(self.tmp / f"{name}.log", "ab"),
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=self.tmp,
        )
        self.workers.append(proc)
        return proc

    def stop_workers(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.workers.clear()

    def close(self) -> None:
        self.stop_workers()
        self.client.close()
        self.server.terminate()
        self.server.wait(timeout=30)
        shutil.rmtree(self.tmp, ignore_errors=True)


def dispatch_rate(bed: Bed, exp_key: str, n: int) -> float:
    """Worker-side trials/s (first reservation to last result, from the job documents)."""
    trials = MongoTrials(bed.url, exp_key=exp_key)
    fmin(
        objective,
        SPACE,
        algo=rand.suggest,
        max_evals=n,
        trials=trials,
        max_queue_len=n,
        show_progressbar=False,
    )
    docs = list(bed.client.bench.jobs.find({"exp_key": exp_key, "state": 2}))
    if len(docs) != n:
        raise RuntimeError(f"{exp_key}: {len(docs)}/{n} trials done")
    span = (max(d["refresh_time"] for d in docs) - min(d["book_time"] for d in docs)).total_seconds()
    trials.delete_all()
    return n / span


def bench_overhead(bed: Bed, n: int, rounds: int) -> dict[str, list[float]]:
    settings = {"off": "0", "default 10 s": "10", "aggressive 1 s": "1"}
    rates: dict[str, list[float]] = {name: [] for name in settings}
    for r in range(rounds):
        for name, beat in settings.items():
            for i in range(2):
                bed.worker(
                    f"w{i}", EXP_KEY=f"ovh-{r}-{beat}", HEARTBEAT=beat, HEARTBEAT_GRACE=str(6 * float(beat))
                )
            rates[name].append(dispatch_rate(bed, f"ovh-{r}-{beat}", n))
            bed.stop_workers()
    return rates


def bench_kill_requeue(bed: Bed) -> tuple[float, float]:
    """(seconds from kill -9 to the trial back in the queue, to it DONE on a new worker)."""
    gate = bed.tmp / "gate"
    lease = {"EXP_KEY": "kill", "HEARTBEAT": "1", "HEARTBEAT_GRACE": "5"}
    doomed = bed.worker("doomed", env={"BENCH_GATE": str(gate)}, **lease)
    trials = MongoTrials(bed.url, exp_key="kill")
    done = threading.Event()

    def drive() -> None:
        fmin(
            gated,
            SPACE,
            algo=rand.suggest,
            max_evals=1,
            trials=trials,
            max_queue_len=1,
            show_progressbar=False,
        )
        done.set()

    threading.Thread(target=drive, daemon=True).start()
    jobs = bed.client.bench.jobs
    job = wait_for(lambda: jobs.find_one({"exp_key": "kill", "state": 1}), 60, "the trial to run")
    killed = time.monotonic()
    doomed.kill()
    doomed.wait()
    wait_for(lambda: jobs.find_one({"_id": job["_id"], "state": 0}), 120, "the trial back in the queue")
    requeued = time.monotonic() - killed
    gate.touch()
    bed.worker("rescuer", env={"BENCH_GATE": str(gate)}, **lease)
    wait_for(done.is_set, 120, "fmin to return")
    return requeued, time.monotonic() - killed


def bench_cluster() -> tuple[float, float]:
    """Local cluster: (kill -9 of a worker -> its new process RUNNING, kill -9 of the server -> it
    answers ping again), pids from the cluster's own supervisord."""
    import yaml

    from pyhoptcluster import HyperoptCluster

    tmp = Path(tempfile.mkdtemp(prefix="bfc-"))  # short: supervisord's socket path has a length limit
    inv = tmp / "inventory"
    shutil.copytree(ROOT / "inventories" / "local", inv)
    group_vars = inv / "group_vars" / "all.yml"
    values = yaml.safe_load(group_vars.read_text()) or {}
    values.update(
        hyperopt_mongodb_state_dir=str(tmp / "server"), hyperopt_worker_state_dir=str(tmp / "workers")
    )
    group_vars.write_text(yaml.safe_dump(values))
    sup_dir = tmp / "server" / "supervisor"

    def pid(program: str) -> int | None:
        out = subprocess.run(
            [
                str(sup_dir / "venv" / "bin" / "supervisorctl"),
                "-c",
                str(sup_dir / "supervisord.conf"),
                "status",
                program,
            ],
            capture_output=True,
            text=True,
        ).stdout.split()
        return int(out[3].rstrip(",")) if len(out) > 3 and out[1] == "RUNNING" else None

    cluster = HyperoptCluster(str(inv), progress=False)
    try:
        cluster.start(worker_count=2, master_port=list(range(27141, 27160)))
        client = pymongo.MongoClient(cluster.info.pymongo_uri(), serverSelectionTimeoutMS=60000)
        old = wait_for(lambda: pid("hyperopt-worker-1"), 60, "worker 1")
        killed = time.monotonic()
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: pid("hyperopt-worker-1") not in (None, old), 120, "a new worker 1")
        worker_back = time.monotonic() - killed

        old = wait_for(lambda: pid("hyperopt-mongodb"), 60, "the server")
        killed = time.monotonic()
        os.kill(old, signal.SIGKILL)

        def answers() -> bool:
            if pid("hyperopt-mongodb") in (None, old):
                return False
            try:
                return bool(client.admin.command("ping"))
            except pymongo.errors.PyMongoError:
                return False

        wait_for(answers, 120, "the server to answer again")
        server_back = time.monotonic() - killed
        client.close()
        return worker_back, server_back
    finally:
        cluster.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--cluster", action="store_true", help="also measure supervision on the local cluster"
    )
    parser.add_argument(
        "--cluster-only", action="store_true", help="only measure supervision (local cluster)"
    )
    args = parser.parse_args()
    if args.cluster_only:
        worker_back, server_back = bench_cluster()
        print(f"kill -9 of a worker -> new worker RUNNING: {worker_back:6.1f} s")
        print(f"kill -9 of the server -> answers again:    {server_back:6.1f} s")
        return
    bed = Bed()
    try:
        rates = bench_overhead(bed, args.trials, args.rounds)
        requeued, rerun = bench_kill_requeue(bed)
    finally:
        bed.close()
    off = sum(rates["off"]) / len(rates["off"])
    print(f"\n{'heartbeats':18} {'trials/s per round':>28} {'mean':>7} {'vs off':>7}")
    for name, values in rates.items():
        mean = sum(values) / len(values)
        print(f"{name:18} {' '.join(f'{v:6.1f}' for v in values):>28} {mean:7.1f} {mean / off:7.1%}")
    print("\nkill -9 of the only worker mid-trial (heartbeat 1 s, grace 5 s):")
    print(f"  trial back in the queue (driver's sweep): {requeued:6.1f} s")
    print(f"  trial DONE on a worker started then:      {rerun:6.1f} s")
    if args.cluster:
        worker_back, server_back = bench_cluster()
        print("\nlocal cluster (supervised):")
        print(f"  kill -9 of a worker -> new worker process: {worker_back:6.1f} s")
        print(f"  kill -9 of the server -> answers again:    {server_back:6.1f} s")


if __name__ == "__main__":
    main()
