"""pytest fixtures for the multi-host test bed (``tests/hosts/testbed.py``).

``testbed_hosts`` (session scope) -> :class:`TestbedInfo` of 3 fresh systemd-nspawn hosts:
    ``.inventory_path`` (Ansible YAML: ``hyperopt_workers`` = the hosts, ``hyperopt_master`` = localhost),
    ``.ips``, ``.hosts`` (``.name``, ``.ip``), ``.key_path`` (root's private key), ``.bridge_ip`` (the
    control node's address on the bridge), ``.ssh(host, command, timeout=60)`` -> CompletedProcess,
    ``.ssh_command(host, command)`` -> argv.
    The hosts are always torn down at the end of the session, also when a test or `up` failed.

``make_testbed_fixture(n=3, name=..., subnet=..., scope="session", fixture_name=...)`` builds another
such fixture (other host count, name, subnet or scope).

Environment: ``PYHOPTCLUSTER_TESTBED_NAME`` (default ``pytest``), ``PYHOPTCLUSTER_TESTBED_SUBNET``
(default ``10.231.1``), ``PYHOPTCLUSTER_TESTBED_HOSTS`` (default 3) for ``testbed_hosts``; the cache and
state locations as in testbed.py. Needs root; a machine that cannot run the hosts fails the test with the
reason (it is never skipped: deselect with ``-m "not multihost"``).

Wiring, e.g. in ``tests/conftest.py`` (this directory is not a package, so load it by path)::

    import importlib.util, sys
    from pathlib import Path
    _spec = importlib.util.spec_from_file_location(
        "pyhoptcluster_testbed_fixtures", Path(__file__).parent / "hosts" / "fixtures.py")
    _fx = importlib.util.module_from_spec(_spec); sys.modules[_spec.name] = _fx; _spec.loader.exec_module(_fx)
    testbed_hosts = _fx.testbed_hosts
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

_HERE = Path(__file__).resolve().parent


def load_testbed() -> ModuleType:
    """testbed.py as a module (one instance per process, whatever path it is imported by)."""
    name = "pyhoptcluster_testbed"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, _HERE / "testbed.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # before exec: dataclasses resolve their module through sys.modules
        spec.loader.exec_module(module)
    return sys.modules[name]


testbed = load_testbed()
Testbed = testbed.Testbed
TestbedInfo = testbed.TestbedInfo
TestbedError = testbed.TestbedError


def running_testbed(
    n: int = 3, name: str = "pytest", subnet: str = "10.231.1", timeout: float = 300.0
) -> Iterator[TestbedInfo]:
    """Generator for fixtures: fresh hosts up, yield their description, always down afterwards."""
    if os.geteuid() != 0:
        pytest.fail(
            "the multi-host test bed needs root (mounts, cgroups, bridges, systemd-nspawn)", pytrace=False
        )
    tb = Testbed(name, n, subnet)
    try:
        # recreate: a session never inherits hosts that an earlier run (or a person) left behind
        info = tb.up(timeout=timeout, recreate=True)
    except TestbedError as exc:
        pytest.fail(f"test bed {name!r} did not come up:\n{exc}", pytrace=False)
    try:
        yield info
    finally:
        tb.down()


def make_testbed_fixture(
    n: int = 3,
    name: str = "pytest",
    subnet: str = "10.231.1",
    *,
    scope: str = "session",
    fixture_name: str = "testbed_hosts",
) -> Callable:
    @pytest.fixture(scope=scope, name=fixture_name)
    def _fixture() -> Iterator[TestbedInfo]:
        yield from running_testbed(n, name, subnet)

    return _fixture


testbed_hosts = make_testbed_fixture(
    n=int(os.environ.get("PYHOPTCLUSTER_TESTBED_HOSTS", "3")),
    name=os.environ.get("PYHOPTCLUSTER_TESTBED_NAME", "pytest"),
    subnet=os.environ.get("PYHOPTCLUSTER_TESTBED_SUBNET", "10.231.1"),
)
