"""Exceptions of the control side. Each says what went wrong and what to do next."""

from __future__ import annotations


class PyhoptclusterError(Exception):
    """Base class of the errors raised by the pyhoptcluster facade."""


class InventoryError(PyhoptclusterError, ValueError):
    """The inventory is missing, empty, or has no worker hosts."""


class PortInUseError(PyhoptclusterError):
    """A single server port was given and it is already taken where the server runs."""


class NoPortsLeftError(PyhoptclusterError):
    """A list of server ports was given and none of them is free where the server runs."""


class MasterStartError(PyhoptclusterError):
    """The server did not answer within the timeout; it has been stopped again."""


class PlaybookError(PyhoptclusterError):
    """A playbook failed for a reason without a more specific exception (see ``failures``)."""

    def __init__(self, message: str, failures: list[str] | None = None) -> None:
        super().__init__(message)
        self.failures = failures or []


class ClusterNotStartedError(PyhoptclusterError):
    """A property or action needs a running cluster; call ``start()`` or ``start_master()`` first."""


# Playbook failure messages start with one of these names; the facade re-raises them as the class.
MESSAGE_PREFIXES: dict[str, type[Exception]] = {
    "ClusterNotStartedError": ClusterNotStartedError,
    "PortInUseError": PortInUseError,
    "NoPortsLeftError": NoPortsLeftError,
    "MasterStartError": MasterStartError,
    "PermissionError": PermissionError,
    "InventoryError": InventoryError,
    "ValueError": ValueError,
}
