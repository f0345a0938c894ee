"""Process, mount and cgroup helpers of the test bed (testbed.py): running commands, PIDs checked by
start time, unmounting, killing a cgroup tree. Stdlib only, no test bed logic."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

POLL_INTERVAL = 0.2  # seconds between readiness probes (always bounded by a deadline)


class TestbedError(RuntimeError):
    """The test bed could not be brought up or torn down; the message says what to do next."""

    __test__ = False  # not a pytest test class


def _log(msg: str) -> None:
    print(f"testbed: {msg}", file=sys.stderr, flush=True)


def _run(
    cmd: list[str], *, check: bool = True, timeout: float | None = None, **kw
) -> subprocess.CompletedProcess:
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    kw.setdefault("text", True)
    kw.setdefault("stdin", subprocess.DEVNULL)
    proc = subprocess.run(cmd, timeout=timeout, check=False, **kw)
    if check and proc.returncode != 0:
        err = (proc.stderr or "").strip() if isinstance(proc.stderr, str) else ""
        raise TestbedError(f"command failed (exit {proc.returncode}): {' '.join(cmd)}\n{err}")
    return proc


def _tail(path: Path, lines: int = 30) -> str:
    try:
        data = path.read_bytes()[-16384:].decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(data.splitlines()[-lines:])


def _proc_start_time(pid: int) -> int | None:
    """Start time (clock ticks since boot) of a live, non-zombie process; None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _alive(pid: int | None, start_time: int | None) -> bool:
    """True only if `pid` is still the very process we recorded (guards against PID reuse)."""
    if not pid:
        return False
    now = _proc_start_time(pid)
    return now is not None and (start_time is None or now == start_time)


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return " ".join(raw.replace(b"\0", b" ").decode(errors="replace").split())[:300]


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    os.replace(tmp, path)


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _mounts_under(path: Path) -> list[Path]:
    """Mount points at or below `path`, deepest first."""
    prefix = str(path.resolve()) if path.exists() else str(path)
    found = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            mnt = line.split()[4].encode().decode("unicode_escape")
            if mnt == prefix or mnt.startswith(prefix + "/"):
                found.append(Path(mnt))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def _umount(path: Path, deadline: float) -> None:
    while True:
        proc = _run(["umount", str(path)], check=False)
        if proc.returncode == 0 or not _mounts_under(path):
            return
        if time.monotonic() > deadline:
            _log(f"{path} still busy, detaching it lazily: {proc.stderr.strip()}")
            _run(["umount", "-l", str(path)], check=False)
            return
        time.sleep(POLL_INTERVAL)


def _rmtree(path: Path) -> None:
    """rm -rf that refuses to descend into anything still mounted below `path`."""
    if not path.exists() and not path.is_symlink():
        return
    mounted = _mounts_under(path)
    if mounted:
        raise TestbedError(f"refusing to delete {path}: still mounted: {', '.join(map(str, mounted))}")
    shutil.rmtree(path)


def _link_exists(dev: str) -> bool:
    return Path("/sys/class/net", dev).exists()


def _cgroup_hierarchies() -> list[Path]:
    """The cgroup trees a launcher must move itself into (both, on a cgroup v1 hybrid machine)."""
    root = Path("/sys/fs/cgroup")
    if (root / "cgroup.controllers").exists():  # pure cgroup v2
        return [root]
    hier = [root / "systemd", root / "unified"]
    missing = [str(h) for h in hier if not (h / "cgroup.procs").exists()]
    if missing:
        raise TestbedError(
            f"cgroup hierarchy not mounted: {', '.join(missing)}; this test bed needs cgroup v2 or the"
            " v1 hybrid layout (name=systemd + unified)"
        )
    return hier


def _cgroup_pids(tree: Path) -> set[int]:
    pids: set[int] = set()
    for procs in tree.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            pids.update(int(x) for x in procs.read_text().split())
    return pids


def _kill_cgroup_tree(tree: Path, deadline: float) -> None:
    """SIGKILL every process in a cgroup tree we created, then remove the tree."""
    if not tree.exists():
        return
    kill_file = tree / "cgroup.kill"
    while True:
        pids = _cgroup_pids(tree)
        if not pids:
            break
        if kill_file.exists():
            with contextlib.suppress(OSError):
                kill_file.write_text("1")
        else:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise TestbedError(f"processes {sorted(pids)} in {tree} survive SIGKILL")
        time.sleep(POLL_INTERVAL / 4)
    dirs = sorted((p for p in tree.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
    for d in [*dirs, tree]:
        while True:
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as exc:  # EBUSY while the last exiting task is being reaped
                if time.monotonic() > deadline:
                    raise TestbedError(f"cannot remove cgroup {d}: {exc}") from exc
                time.sleep(POLL_INTERVAL / 4)


def _tcp_open(ip: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except OSError:
        return False
