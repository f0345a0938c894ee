"""Real ``pyhoptcluster-worker`` processes and a real fmin driver, for the integration tests.

Objectives live in ``tests/objectives.py``; workers import it with ``PYTHONPATH=<repo>/tests``.
:class:`Workers` stops every process it started, by PID, in ``close()`` (the ``workers`` fixture
of conftest.py).
"""

from __future__ import annotations

import importlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hyperopt import fmin, hp, rand
from hyperopt.mongoexp import MongoTrials

import pyhoptcluster  # noqa: F401  (makes MongoTrials work on pymongo 4)

REPO = Path(__file__).resolve().parents[2]
TESTS_DIR = REPO / "tests"
WORKER_BIN = Path(sys.executable).with_name("pyhoptcluster-worker")
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))
objectives = importlib.import_module("objectives")

HOSTNAME = socket.gethostname()
SPACE = hp.uniform("x", -5, 5)


def wait_for(cond: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def proc_text(pid: int, name: str) -> str:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            found.extend(kids)
            todo.extend(kids)
    return found


@dataclass
class WorkerProc:
    instance: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def owner(self) -> str:
        return f"{HOSTNAME}:{self.instance}:{self.pid}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


class Workers:
    """Starts pyhoptcluster-worker processes; stops every one it started (by PID) in close()."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[WorkerProc] = []

    def start(self, config: Path | None, instance: str, env: dict[str, str] | None = None) -> WorkerProc:
        if not WORKER_BIN.exists():
            pytest.fail(f"{WORKER_BIN} missing: run `{sys.executable} -m pip install -e {REPO} --no-deps`")
        log_path = self.tmp / f"worker-{instance}.log"
        argv = [str(WORKER_BIN), "--instance", instance]
        if config is not None:
            argv += ["--config", str(config)]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("HYPEROPT_WORKER_")}
        full_env.update(env or {})
        full_env["PYTHONPATH"] = str(TESTS_DIR)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=self.tmp,
            )
        worker = WorkerProc(instance, proc, log_path)
        self.started.append(worker)
        return worker

    def close(self) -> None:
        for worker in self.started:
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        for worker in self.started:
            try:
                worker.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait(timeout=10)


def write_config(path: Path, **keys: str) -> Path:
    """A 0600 KEY=VALUE file; keys are given without the HYPEROPT_WORKER_ prefix."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("# pyhoptcluster worker config (test)\n")
        for key, value in keys.items():
            f.write(f"HYPEROPT_WORKER_{key}={value}\n")
    return path


def run_fmin(url: str, exp_key: str, fn: Callable, n: int, max_queue_len: int = 1) -> MongoTrials:
    trials = MongoTrials(url, exp_key=exp_key)
    fmin(
        fn,
        SPACE,
        algo=rand.suggest,
        max_evals=n,
        trials=trials,
        max_queue_len=max_queue_len,
        show_progressbar=False,
        return_argmin=False,
    )
    return trials


class FminThread(threading.Thread):
    def __init__(self, url: str, exp_key: str, fn: Callable, n: int, max_queue_len: int = 1) -> None:
        super().__init__(daemon=True)
        self.args_ = (url, exp_key, fn, n, max_queue_len)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            run_fmin(*self.args_)
        except BaseException as exc:
            self.error = exc


def fmin_within(
    timeout: float, url: str, exp_key: str, fn: Callable, n: int, max_queue_len: int = 1
) -> MongoTrials:
    """run_fmin in a thread, failing the test (instead of hanging) if the workers never finish."""
    driver = FminThread(url, exp_key, fn, n, max_queue_len)
    driver.start()
    driver.join(timeout)
    if driver.is_alive():
        pytest.fail(f"fmin of {n} trials ({exp_key}) did not finish within {timeout} s")
    if driver.error is not None:
        raise driver.error
    return MongoTrials(url, exp_key=exp_key)


def all_jobs(server, exp_key: str) -> list[dict]:
    with server.client() as client:
        return list(client[server.dbname].jobs.find({"exp_key": exp_key}, sort=[("tid", 1)]))
