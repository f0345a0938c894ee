"""The server binds to the control node's address towards the worker hosts, never 0.0.0.0."""

from __future__ import annotations

import json
import re
import socket
import subprocess
from pathlib import Path

import pytest
from local_cluster import free_port, make_local_inventory

pytestmark = pytest.mark.integration

# Documentation-range address (TEST-NET-3): the route lookup sends no packet, and master.yml never
# connects to worker hosts.
REMOTE_WORKER = "203.0.113.7"


def test_server_binds_to_the_control_nodes_route_source_towards_remote_workers(tmp_path: Path) -> None:
    # SecantusDB: with a remote worker host the role's auto method would pick MongoDB's packages
    inv = make_local_inventory(
        tmp_path, hyperopt_mongodb_port=free_port(), hyperopt_mongodb_install_method="pip"
    )
    (inv.path / "hosts.yml").write_text(
        "all:\n  children:\n    hyperopt_master:\n      hosts:\n        localhost:\n"
        "          ansible_connection: local\n"
        "          ansible_python_interpreter: '{{ ansible_playbook_python }}'\n"
        f"    hyperopt_workers:\n      hosts:\n        w1:\n          ansible_host: {REMOTE_WORKER}\n"
    )
    route = subprocess.run(["ip", "-o", "route", "get", REMOTE_WORKER], capture_output=True, text=True)
    match = re.search(r"\bsrc (\S+)", route.stdout)
    assert match, f"no route source on this machine: {route.stdout} {route.stderr}"
    try:
        inv.playbook("master.yml")
        server = json.loads((inv.state_dir / "server.json").read_text())
        assert server["host"] == match.group(1) != "0.0.0.0"
    finally:
        inv.playbook("stop.yml", "--tags", "hyperopt_mongodb", check=False)
        inv.kill_leftovers()


def test_port_taken_on_loopback_is_skipped_for_the_auth_bootstrap(tmp_path: Path) -> None:
    # Bound to another address, the server's no-auth bootstrap still runs on 127.0.0.1:<port>, so a
    # port taken there must not be chosen.
    inv = make_local_inventory(tmp_path, hyperopt_mongodb_bind_addresses=["127.0.0.2"])
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken, free = held.getsockname()[1], free_port()
        try:
            inv.playbook("master.yml", "-e", json.dumps({"hyperopt_mongodb_port": [taken, free]}))
            server = json.loads((inv.state_dir / "server.json").read_text())
            assert (server["host"], server["port"]) == ("127.0.0.2", free)
        finally:
            inv.playbook("stop.yml", "--tags", "hyperopt_mongodb", check=False)
            inv.kill_leftovers()
