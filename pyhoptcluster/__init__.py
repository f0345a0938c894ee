"""pyhoptcluster: a Hyperopt cluster brought up by Ansible and driven from Python.

Importing the package makes hyperopt's Mongo mode (``hyperopt.mongoexp``) work on pymongo 4 and
lets a trials object set fmin's driver poll (``trials.poll_interval_secs``, see :mod:`.driver`).
The control side (``HyperoptCluster``, the launchers, the errors) is imported lazily on first use,
so worker hosts, which have neither Ansible nor ansible-runner, can import the package.
"""

from __future__ import annotations

import importlib
import importlib.metadata as _metadata
from typing import TYPE_CHECKING, Any

from pyhoptcluster.compat import driver as _driver
from pyhoptcluster.compat import trials as _trials
from pyhoptcluster.compat.trials import TrialsFailedError

_trials.apply()
_driver.apply()

try:  # one version: pyproject.toml's, as the installed distribution records it
    __version__ = _metadata.version("pyhoptcluster")
except _metadata.PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "0+unknown"

_LAZY = {
    "HyperoptCluster": "control.cluster",
    "ClusterInfo": "control.state",
    "MasterLauncher": "control.launchers",
    "WorkerLauncher": "control.launchers",
    "LocalMongoLauncher": "control.launchers",
    "RoundRobinLauncher": "control.launchers",
    "PyhoptclusterError": "errors",
    "InventoryError": "errors",
    "PortInUseError": "errors",
    "NoPortsLeftError": "errors",
    "MasterStartError": "errors",
    "PlaybookError": "errors",
    "ClusterNotStartedError": "errors",
}
__all__ = [
    "ClusterInfo",
    "ClusterNotStartedError",
    "HyperoptCluster",
    "InventoryError",
    "LocalMongoLauncher",
    "MasterLauncher",
    "MasterStartError",
    "NoPortsLeftError",
    "PlaybookError",
    "PortInUseError",
    "PyhoptclusterError",
    "RoundRobinLauncher",
    "TrialsFailedError",
    "WorkerLauncher",
    "__version__",
]

if TYPE_CHECKING:
    from pyhoptcluster.control.cluster import HyperoptCluster
    from pyhoptcluster.control.launchers import (
        LocalMongoLauncher,
        MasterLauncher,
        RoundRobinLauncher,
        WorkerLauncher,
    )
    from pyhoptcluster.control.state import ClusterInfo
    from pyhoptcluster.errors import (
        ClusterNotStartedError,
        InventoryError,
        MasterStartError,
        NoPortsLeftError,
        PlaybookError,
        PortInUseError,
        PyhoptclusterError,
    )


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pyhoptcluster' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"pyhoptcluster.{module}"), name)
    globals()[name] = value
    return value
