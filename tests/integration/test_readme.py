"""The Python example in README.md runs as written (in a private HOME, so it never touches the
user's own local cluster)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from local_cluster import ROOT, SHARED, LocalInventory

pytestmark = pytest.mark.integration


def test_readme_python_example_runs_and_cleans_up(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    example = next(b for b in blocks if "HyperoptCluster(" in b)
    home = tmp_path / "home"
    share = home / ".local" / "share" / "pyhoptcluster"
    share.mkdir(parents=True)
    # reuse the installed (stateless) venvs; everything with state lands in the private HOME
    for venv in ("secantusdb-venv", "worker-venv"):
        if (SHARED / venv).is_dir():
            (share / venv).symlink_to(SHARED / venv)
    env = {**os.environ, "HOME": str(home)}
    proc = subprocess.run(
        [sys.executable, "-c", example], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "{'x':" in proc.stdout and "'localhost': [1, 2]" in proc.stdout
    assert LocalInventory(ROOT / "inventories" / "local", share, share / "workers").pids() == {}
