"""The Python example in README.md runs as written (in a private HOME, so it never touches the
user's own local cluster)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from local_cluster import ROOT, SHARED, LocalInventory

pytestmark = pytest.mark.integration


@pytest.fixture
def home() -> Iterator[Path]:
    """A private HOME with a short path: supervisord's socket lands in it, and a unix socket's
    address holds at most 107 bytes (tmp_path is too deep for that)."""
    path = Path(tempfile.mkdtemp(prefix="pyhc-", dir="/tmp"))
    try:
        yield path
    finally:
        # what a failed example left running there (its supervisord, server, workers), by pid
        _inventory(path).kill_leftovers()
        shutil.rmtree(path, ignore_errors=True)


def _inventory(home: Path) -> LocalInventory:
    share = home / ".local" / "share" / "pyhoptcluster"
    return LocalInventory(ROOT / "inventories" / "local", share, share / "workers")


def test_readme_python_example_runs_and_cleans_up(home: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    example = next(b for b in blocks if "HyperoptCluster(" in b)
    share = home / ".local" / "share" / "pyhoptcluster"
    share.mkdir(parents=True)
    # reuse the installed (stateless) venvs; everything with state lands in the private HOME
    for venv in ("secantusdb-venv", "worker-venv", "supervisor/venv"):
        if (SHARED / venv).is_dir():
            (share / venv).parent.mkdir(mode=0o700, exist_ok=True)
            (share / venv).symlink_to(SHARED / venv)
    env = {**os.environ, "HOME": str(home)}
    proc = subprocess.run(
        [sys.executable, "-c", example], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "{'x':" in proc.stdout and "'localhost': [1, 2]" in proc.stdout
    inventory = _inventory(home)
    assert inventory.pids() == {}
    assert inventory.supervisor.supervisord_pid() is None, "cleanup() stops supervisord too"
