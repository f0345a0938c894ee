"""Helpers for tests that bring up the local cluster (inventories/local) in a private state dir.

Every cluster gets its own copy of the local inventory whose group_vars point the server's and the
workers' state dirs into a tmp dir, so tests never touch a user's cluster: the cluster's supervisord
lives in <server state dir>/supervisor. The worker venv and the SecantusDB and supervisor venvs are
shared (installing them is slow and they hold no state).
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymongo
import yaml
from hyperopt import fmin, hp, rand, tpe
from hyperopt.mongoexp import MongoTrials

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SHARED = Path("~/.local/share/pyhoptcluster").expanduser()


# supervisor's venv holds no state: every test cluster's supervisord runs from this one.
SUPERVISOR_VENV = SHARED / "supervisor" / "venv"


@dataclass
class Supervisor:
    """The supervisord of one test cluster (its own dir, so never a user's or another test's)."""

    dir: Path

    def ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        ctl = SUPERVISOR_VENV / "bin" / "supervisorctl"
        cmd = [str(ctl), "-c", str(self.dir / "supervisord.conf"), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)

    @property
    def sock(self) -> Path:
        """supervisord's socket, as its config says (in /tmp when the supervisor dir's path is too long)."""
        conf = configparser.RawConfigParser()
        conf.read(self.dir / "supervisord.conf")
        return Path(conf.get("unix_http_server", "file", fallback=str(self.dir / "supervisor.sock")))

    def status(self) -> dict[str, tuple[str, int | None]]:
        """Program -> (state, pid) as ``supervisorctl status`` says ({} when supervisord does not answer)."""
        if not self.sock.exists():
            return {}
        proc = self.ctl("status")
        if proc.returncode > 3:
            return {}
        result: dict[str, tuple[str, int | None]] = {}
        for line in proc.stdout.splitlines():
            fields = line.split()
            if len(fields) >= 2:
                pid = int(fields[3].rstrip(",")) if len(fields) > 3 and fields[2] == "pid" else None
                result[fields[0]] = (fields[1], pid)
        return result

    def pids(self) -> dict[str, int]:
        """Program -> pid of the programs supervisord runs now."""
        return {name: pid for name, (_, pid) in self.status().items() if pid is not None and _alive(pid)}

    def supervisord_pid(self) -> int | None:
        """The pid of this dir's supervisord (its pid file, checked against its command line)."""
        try:
            pid = int((self.dir / "supervisord.pid").read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError, IndexError):
            return None
        return pid if "supervisord" in cmdline and str(self.dir) in cmdline and _alive(pid) else None

    def wait_for(
        self, program: str, predicate: Callable[[str, int | None], bool], timeout: float = 60
    ) -> tuple[str, int | None, float]:
        """Poll ``status()`` until ``predicate(state, pid)`` holds for ``program``; (state, pid, seconds)."""
        start = time.monotonic()
        state, pid = self.status().get(program, ("", None))
        while not predicate(state, pid):
            if time.monotonic() - start > timeout:
                raise AssertionError(f"{program}: still {state} pid {pid} after {timeout} s")
            time.sleep(0.05)
            state, pid = self.status().get(program, ("", None))
        return state, pid, time.monotonic() - start

    def kill(self) -> None:
        """Teardown: supervisord first (so it restarts nothing), then the process groups of the programs
        it ran (each program leads its own group)."""
        programs = list(self.pids().values())
        daemon = self.supervisord_pid()
        for pid in [daemon] if daemon else []:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for pid in programs:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        # what supervisord no longer knows of (it lost the program, or did not answer) but still runs
        # with this cluster's state dir in its command line, e.g. a server whose config file lives there
        for pid in self.strays():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if self.sock.parent != self.dir:  # the socket's own dir in /tmp (a supervisor dir too long for it)
            shutil.rmtree(self.sock.parent, ignore_errors=True)

    def strays(self) -> list[int]:
        """Live processes whose command line names a file in this supervisor's state dir (its parent)."""
        state = str(self.dir.parent.resolve()) + "/"
        if state.count("/") < 4:  # never a sweep over a shared top-level dir
            return []
        found = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and int(proc.name) != os.getpid():
                try:
                    cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if state in cmdline and _alive(int(proc.name)):
                    found.append(int(proc.name))
        return found


@dataclass
class LocalInventory:
    path: Path  # inventory directory
    state_dir: Path  # server state (password, db, server.json; supervisor/ holds the supervisord)
    worker_state_dir: Path

    @property
    def supervisor(self) -> Supervisor:
        return Supervisor(self.state_dir / "supervisor")

    def playbook(self, name: str, *extra: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``ansible-playbook playbooks/<name> -i <inventory>`` from the repo root."""
        cmd = [str(BIN / "ansible-playbook"), f"playbooks/{name}", "-i", str(self.path), *extra]
        env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def pids(self) -> dict[str, int]:
        """Live pids of this cluster's server and workers (program -> pid), as its supervisord says."""
        return self.supervisor.pids()

    def client(self, password: str | None = None, timeout_ms: int = 10000) -> pymongo.MongoClient:
        """An authenticated client of this cluster's server (server.json), with ``password`` or, by
        default, what the password file holds now."""
        info = json.loads((self.state_dir / "server.json").read_text())
        if password is None:
            password = (self.state_dir / "mongodb.password").read_text().strip()
        return pymongo.MongoClient(
            "127.0.0.1",
            int(info["port"]),
            username=info["username"],
            password=password,
            authSource=info["dbname"],
            directConnection=True,
            serverSelectionTimeoutMS=timeout_ms,
        )

    def kill_leftovers(self) -> None:
        self.supervisor.kill()


def run_fmin(
    url: str,
    exp_key: str,
    n: int,
    workers: int,
    objective: Callable[[float], float],
    poll_interval: float | None = None,
) -> MongoTrials:
    """A real distributed fmin of ``n`` trials through plain MongoTrials; returns the refreshed trials.
    ``objective`` must be picklable by value (workers cannot import test modules); ``poll_interval``
    sets the driver's poll (``trials.poll_interval_secs``, pyhoptcluster.compat.driver)."""
    trials = MongoTrials(url, exp_key=exp_key)
    if poll_interval is not None:
        trials.poll_interval_secs = poll_interval
    fmin(
        objective,
        hp.uniform("x", -5, 5),
        algo=tpe.suggest,
        max_evals=n,
        trials=trials,
        max_queue_len=workers,
        show_progressbar=False,
    )
    trials.refresh()
    return trials


def fmin_in_background(
    trials: MongoTrials, objective: Callable[[float], Any], n: int, max_queue_len: int
) -> tuple[threading.Thread, list[BaseException]]:
    """A started daemon thread running ``fmin`` (rand.suggest) of ``n`` trials into ``trials``, and
    the list that gets what it raised (join the thread, then assert the list is empty)."""
    errors: list[BaseException] = []

    def drive() -> None:
        try:
            fmin(
                objective,
                hp.uniform("x", -5, 5),
                algo=rand.suggest,
                max_evals=n,
                trials=trials,
                max_queue_len=max_queue_len,
                show_progressbar=False,
            )
        except BaseException as exc:  # reported by the test's thread
            errors.append(exc)

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    return driver, errors


def make_local_inventory(tmp: Path, **group_vars: object) -> LocalInventory:
    inv = tmp / "inventory"
    shutil.copytree(ROOT / "inventories" / "local", inv)
    state, wstate = tmp / "server-state", tmp / "worker-state"
    all_vars_file = inv / "group_vars" / "all.yml"
    all_vars = yaml.safe_load(all_vars_file.read_text()) or {}
    all_vars.update(
        {
            "hyperopt_mongodb_state_dir": str(state),
            # share the (slow to install, stateless) SecantusDB venv with the default location
            "hyperopt_mongodb_pip_venv": str(SHARED / "secantusdb-venv"),
            "hyperopt_worker_state_dir": str(wstate),
            "hyperopt_supervisor_venv": str(SUPERVISOR_VENV),
            **group_vars,
        }
    )
    all_vars_file.write_text(yaml.safe_dump(all_vars))
    return LocalInventory(inv, state, wstate)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_gone(pids: list[int], timeout: float = 30.0) -> list[int]:
    """Pids still alive after ``timeout`` (empty = all gone)."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _alive(p)]
        if alive:
            time.sleep(0.1)
    return alive


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def all_cmdlines() -> str:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                out.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                pass
    return "\n".join(out)
