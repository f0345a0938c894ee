"""roles/hyperopt_worker/files/ssh_tunnel_keeper.py: the process that keeps a worker host's ssh tunnel up.
Run as a real process with real child commands (a short-lived Python standing in for ssh)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

KEEPER = Path(__file__).resolve().parents[2] / "roles/hyperopt_worker/files/ssh_tunnel_keeper.py"


def _keeper(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(KEEPER), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_a_first_start_that_fails_at_once_ends_the_keeper_with_its_status():
    keeper = _keeper("--", sys.executable, "-c", "import sys; sys.exit(7)")
    out, _ = keeper.communicate(timeout=30)
    assert keeper.returncode == 7, out
    assert "on its first start; giving up" in out


def test_a_command_that_exits_later_is_started_again_until_the_keeper_is_stopped(tmp_path):
    starts = tmp_path / "starts"
    child = f"import os, time; open({str(starts)!r}, 'a').write(f'{{os.getpid()}}\\n'); time.sleep(0.3)"
    keeper = _keeper("--first-grace", "0.1", "--max-backoff", "1", "--", sys.executable, "-c", child)
    deadline = time.monotonic() + 30
    while not starts.exists() or len(starts.read_text().split()) < 3:
        assert time.monotonic() < deadline and keeper.poll() is None, keeper.stdout.read()
        time.sleep(0.1)
    keeper.send_signal(signal.SIGTERM)
    out, _ = keeper.communicate(timeout=30)
    assert keeper.returncode == 0, out
    pids = [int(p) for p in starts.read_text().split()]
    assert len(set(pids)) == len(pids) >= 3
    assert out.count("starting it again") >= 2 and out.rstrip().endswith("stopped")
    assert not any(_alive(pid) for pid in pids)


def test_sigterm_stops_the_running_command_and_the_keeper():
    keeper = _keeper("--", sys.executable, "-c", "import time; time.sleep(300)")
    deadline = time.monotonic() + 30
    line = keeper.stdout.readline()
    assert "ssh started (pid " in line, line
    child = int(line.split("(pid ")[1].split(")")[0])
    assert _alive(child)
    os.kill(keeper.pid, signal.SIGTERM)
    out, _ = keeper.communicate(timeout=30)
    assert keeper.returncode == 0, out
    while _alive(child):
        assert time.monotonic() < deadline
        time.sleep(0.05)
