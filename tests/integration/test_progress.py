"""Progress of long work: `pyhoptcluster up/down` live in a pseudo-terminal, plain lines in a pipe,
nothing with --quiet (real playbook runs on the local cluster, private state dirs)."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from local_cluster import BIN, LocalInventory, free_port, make_local_inventory

pytestmark = pytest.mark.integration

CLI = str(BIN / "pyhoptcluster")
ANSI = re.compile(rb"\x1b\[")


@pytest.fixture
def inventory(tmp_path: Path) -> Iterator[LocalInventory]:
    inv = make_local_inventory(tmp_path, hyperopt_mongodb_port=free_port())
    try:
        yield inv
    finally:
        inv.playbook("stop.yml", check=False)
        inv.kill_leftovers()


def run_in_pty(argv: list[str], timeout: float = 900) -> tuple[int, bytes]:
    """Run ``argv`` with stdin/stdout/stderr on a new pseudo-terminal; (exit code, all it wrote)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child
        os.execvpe(argv[0], argv, {**os.environ, "COLUMNS": "120", "TERM": "xterm"})
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), out


def test_up_shows_live_progress_in_a_terminal_plain_lines_in_a_pipe_and_nothing_when_quiet(inventory):
    code, out = run_in_pty([CLI, "up", "-i", str(inventory.path), "--workers", "1"])
    assert code == 0, out.decode(errors="replace")
    assert ANSI.search(out), "a terminal gets the live (rich) line"
    text = ANSI.sub(b"", out).decode(errors="replace")
    assert "pyhoptcluster: starting the cluster" in text and "done in" in text
    assert re.search(r"\[\s*\d+\.\d s\] [^\n]+: Write the worker config file [^\n]*\(1/1 host\)", text), text
    assert "mongo_trial_url:" in text

    plain = subprocess.run([CLI, "down", "-i", str(inventory.path)], capture_output=True, timeout=900)
    assert plain.returncode == 0, plain.stderr
    assert not ANSI.search(plain.stderr) and not ANSI.search(plain.stdout)
    lines = plain.stderr.decode().splitlines()
    assert lines[0] == "pyhoptcluster: stopping the cluster ..."
    assert re.fullmatch(r"pyhoptcluster: stopping the cluster done in \d+\.\d s", lines[-1])
    assert any(re.fullmatch(r"\[\s*\d+\.\d s\] Stop the cluster: .+ \(\d/\d hosts?\)", ln) for ln in lines), (
        lines
    )

    quiet = subprocess.run(
        [CLI, "up", "-q", "-i", str(inventory.path), "--workers", "1"], capture_output=True, timeout=900
    )
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == b""
    assert b"mongo_trial_url:" in quiet.stdout
