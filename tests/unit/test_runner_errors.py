"""Playbook failures become the exception their message names."""

from __future__ import annotations

import pytest

from pyhoptcluster.control.runner import HostFailure, PlaybookRun
from pyhoptcluster.errors import MasterStartError, NoPortsLeftError, PlaybookError, PortInUseError


def _failed(message: str) -> PlaybookRun:
    return PlaybookRun(
        playbook="site.yml",
        status="failed",
        rc=2,
        failures=[HostFailure(host="localhost", task="Choose the server port", message=message)],
    )


@pytest.mark.parametrize(
    ("message", "exc"),
    [
        ("PortInUseError: port 27017 is taken on localhost", PortInUseError),
        ("NoPortsLeftError: none of 27017, 27018 is free", NoPortsLeftError),
        ("MasterStartError: no answer within 3 s", MasterStartError),
        ("PermissionError: cannot create /root/x", PermissionError),
    ],
)
def test_prefixed_failure_raises_named_exception(message: str, exc: type[Exception]) -> None:
    with pytest.raises(exc, match=message.split(": ", 1)[1]):
        _failed(message).raise_for_failure()


def test_other_failure_raises_playbook_error_naming_host_and_task() -> None:
    with pytest.raises(PlaybookError, match="localhost failed at 'Choose the server port': boom"):
        _failed("boom").raise_for_failure()


def test_successful_run_does_not_raise() -> None:
    PlaybookRun(playbook="site.yml", status="successful", rc=0).raise_for_failure()
