"""The per-host supervisor of the test bed (`testbed.py _supervise`): runs detached, one per host, and
keeps systemd-nspawn booted (again after a reboot inside) until it is told to stop; its PID is what
`down` stops."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

NSPAWN_REBOOT_EXIT = 133  # systemd-nspawn's exit code when the container asked for a reboot
STOP_GRACE = 10.0  # seconds a host gets for an orderly poweroff before its cgroup is killed


def supervise(machine: str, root: str, bridge: str, cgroup: str, hierarchies: list[str]) -> int:
    # Own cgroup in every hierarchy before nspawn starts, or the hosts collide on payload/.
    for hier in hierarchies:
        d = Path(hier) / cgroup
        d.mkdir(parents=True, exist_ok=True)
        (d / "cgroup.procs").write_text(str(os.getpid()))
    cmd = [
        "systemd-nspawn",
        "-b",
        "-D",
        root,
        "-M",
        machine,
        f"--network-bridge={bridge}",
        "--register=no",
        "--keep-unit",
        "--console=passive",
    ]
    env = dict(os.environ, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="1")
    stopping = False
    child: subprocess.Popen | None = None

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)  # nspawn turns it into an orderly poweroff inside

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    rc = 0
    while not stopping:
        print(f"testbed-supervisor: starting {machine}", flush=True)
        child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        if stopping:  # a signal raced with the spawn
            child.send_signal(signal.SIGTERM)
        rc = _wait_nspawn(child, lambda: stopping, machine)
        if rc != NSPAWN_REBOOT_EXIT:
            break
        print(f"testbed-supervisor: {machine} rebooted (exit {rc}), starting it again", flush=True)
    print(f"testbed-supervisor: {machine} stopped (exit {rc})", flush=True)
    return 0 if stopping else rc


def _wait_nspawn(child: subprocess.Popen, stopping: Callable[[], bool], machine: str) -> int:
    """Wait for nspawn. Once asked to stop, repeat the SIGTERM every second: a systemd that is still
    starting has no handler for the poweroff signal yet and drops it. After STOP_GRACE seconds give
    up and leave; `down` then kills whatever is left in the host's cgroups."""
    stop_since = None
    while True:
        try:
            return child.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            pass
        if not stopping():
            continue
        stop_since = stop_since or time.monotonic()
        if time.monotonic() - stop_since > STOP_GRACE:
            print(f"testbed-supervisor: {machine} did not power off in {STOP_GRACE:.0f} s", flush=True)
            return -1
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)
