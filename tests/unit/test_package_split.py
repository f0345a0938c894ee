"""The worker side must not pull in the control side: worker hosts have no Ansible."""

from __future__ import annotations

import subprocess
import sys


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_worker_import_loads_no_ansible_and_no_control_side() -> None:
    loaded = _modules_after("import pyhoptcluster.worker")
    assert not {m for m in loaded if m.startswith(("ansible", "ansible_runner"))}
    control = {"cluster", "launchers", "runner", "cli", "inventory"}
    assert not {m for m in loaded if m.startswith("pyhoptcluster.") and m.split(".")[1] in control}


def test_control_side_is_reachable_from_the_package() -> None:
    loaded = _modules_after("from pyhoptcluster import HyperoptCluster, PortInUseError")
    assert "pyhoptcluster.cluster" in loaded
