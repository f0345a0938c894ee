"""The package shows where its code runs: control/ (control node), worker/ (worker hosts, no Ansible),
compat/ (hyperopt's Mongo mode, both sides). The worker side must not pull in the control side, the
compatibility layer must not depend on either, and its modules import each other without a cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "pyhoptcluster"


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def _imports(path: Path) -> set[str]:
    """The pyhoptcluster modules a file imports at module level (not inside functions)."""
    found: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pyhoptcluster"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("pyhoptcluster"))
    return found


def test_worker_import_loads_no_ansible_and_no_control_side() -> None:
    loaded = _modules_after("import pyhoptcluster.worker.main")
    assert not {m for m in loaded if m.startswith(("ansible", "ansible_runner"))}
    assert not {m for m in loaded if m.startswith("pyhoptcluster.control")}


def test_control_side_is_reachable_from_the_package() -> None:
    loaded = _modules_after("from pyhoptcluster import HyperoptCluster, PortInUseError")
    assert "pyhoptcluster.control.cluster" in loaded


def test_every_module_sits_in_one_of_the_three_sides() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    # shared by all three: the exceptions and the input rules (stdlib only)
    assert top == ["__init__.py", "errors.py", "validation.py"]
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} >= {
        "control",
        "worker",
        "compat",
    }


def test_the_compatibility_layer_imports_neither_side() -> None:
    for path in (PACKAGE / "compat").glob("*.py"):
        bad = {m for m in _imports(path) if m.startswith("pyhoptcluster.control")}
        assert not bad, f"{path.name} imports {bad}"


def test_compat_modules_import_each_other_without_a_cycle() -> None:
    graph = {
        p.stem: {m.split(".")[2] for m in _imports(p) if m.startswith("pyhoptcluster.compat.")}
        for p in (PACKAGE / "compat").glob("*.py")
    }
    assert "trials" in graph["mongourl"] or "mongourl" in graph["trials"]  # the pair the cycle was
    seen: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, f"import cycle: {' -> '.join((*path, node))}"
        if node in seen:
            return
        for nxt in graph.get(node, ()):
            visit(nxt, (*path, node))
        seen.add(node)

    for module in graph:
        visit(module, ())
    # and no function-level import of trials from mongourl (the old way round the cycle)
    assert "import pyhoptcluster.compat.trials" not in (PACKAGE / "compat" / "mongourl.py").read_text()
    assert "from pyhoptcluster.compat.trials" not in (PACKAGE / "compat" / "mongourl.py").read_text()
