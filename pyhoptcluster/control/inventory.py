"""Turn what the user passed as ``inventory`` into something ansible-runner can use.

Accepted: a path (file or directory, as ``ansible-playbook -i`` takes it), an inventory dict
(YAML-inventory structure), or a list of worker host names. Whether the inventory really has worker
hosts is checked by the playbooks themselves (their first play), so every way in gets the same error.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pyhoptcluster.errors import InventoryError

InventorySpec = str | os.PathLike[str] | Mapping[str, Any] | Sequence[str]

MASTER_GROUP = "hyperopt_master"
WORKER_GROUP = "hyperopt_workers"
_LOCAL_NAMES = {"localhost", "127.0.0.1", "::1"}


def _local_host_vars() -> dict[str, str]:
    return {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}


def from_host_names(hosts: Sequence[str]) -> dict[str, Any]:
    """An inventory with the control node as master and ``hosts`` as workers, in the given order."""
    names = [str(h).strip() for h in hosts]
    if not names or any(not n for n in names):
        raise InventoryError(
            "the host list is empty or has an empty name; pass worker host names, e.g. ['localhost'] "
            "or ['node1', 'node2'], or an inventory path"
        )
    if len(set(names)) != len(names):
        raise InventoryError(f"the host list names a host twice: {names}; list each worker host once")
    workers: dict[str, Any] = {n: (_local_host_vars() if n in _LOCAL_NAMES else {}) for n in names}
    master = {"localhost": _local_host_vars()}
    return {"all": {"children": {MASTER_GROUP: {"hosts": master}, WORKER_GROUP: {"hosts": workers}}}}


def normalize(inventory: InventorySpec) -> str | dict[str, Any]:
    """Return an absolute inventory path or an inventory dict; raise InventoryError on bad input."""
    if isinstance(inventory, (str, os.PathLike)):
        path = Path(inventory).expanduser()
        if not path.exists():
            raise InventoryError(
                f"inventory path {path} does not exist; pass an Ansible inventory file or directory "
                "(e.g. inventories/local) or a list of host names"
            )
        if path.is_file() and not path.read_text(encoding="utf-8", errors="replace").strip():
            raise InventoryError(f"inventory file {path} is empty; add a '{WORKER_GROUP}' group with hosts")
        if path.is_dir() and not any(p.is_file() for p in path.rglob("*")):
            raise InventoryError(f"inventory directory {path} has no files; add a hosts file")
        return str(path.resolve())
    if isinstance(inventory, Mapping):
        if not inventory:
            raise InventoryError(f"the inventory dict is empty; give it a '{WORKER_GROUP}' group with hosts")
        return dict(inventory)
    if isinstance(inventory, Sequence):
        return from_host_names(inventory)
    raise InventoryError(
        f"unsupported inventory {inventory!r}: pass a path, an inventory dict or a list of host names"
    )
