"""Bad input never touches a running cluster (issue 7, item 7): an over-long dbname and a million
workers are refused, with the rule's message, through every way in - ``ansible-playbook site.yml -e``,
the facade, the CLI and the roles in a user's own playbook - while the server and the workers that
already run keep their pids and the server keeps answering.

One real local cluster (inventories/local in a tmp state dir) is brought up for the whole module.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pymongo
import pytest
from local_cluster import BIN, ROOT, LocalInventory, free_port, make_local_inventory

from pyhoptcluster import HyperoptCluster, RoundRobinLauncher

pytestmark = pytest.mark.integration

LONG_DBNAME = "d" * 70
DBNAME_MESSAGE = "is 70 bytes long, MongoDB allows at most 63 bytes in a database name"
COUNT_MESSAGE = "1000000 workers do not fit on the 1 worker host: a host runs at most 256 workers"


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalInventory]:
    inv = make_local_inventory(tmp_path_factory.mktemp("bad-inputs"), hyperopt_mongodb_port=free_port())
    try:
        inv.playbook("site.yml", "-e", "hyperopt_worker_count=2")
        yield inv
    finally:
        inv.playbook("stop.yml", check=False)
        inv.kill_leftovers()


@pytest.fixture
def untouched(running: LocalInventory) -> Iterator[LocalInventory]:
    """The test's bad input must leave the cluster exactly as it was: same pids, server answering."""
    before = running.pids()
    assert len(before) == 3, before  # server + 2 workers
    yield running
    assert running.pids() == before
    port = int(json.loads((running.state_dir / "server.json").read_text())["port"])
    with pymongo.MongoClient("127.0.0.1", port, serverSelectionTimeoutMS=5000) as client:
        assert client.admin.command("ping")["ok"] == 1


def _failed_with(proc: subprocess.CompletedProcess[str], message: str) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert message in out, out
    return out


def test_overlong_dbname_leaves_running_server_untouched(untouched: LocalInventory) -> None:
    proc = untouched.playbook("site.yml", "-e", f"hyperopt_mongodb_dbname={LONG_DBNAME}", check=False)
    out = _failed_with(proc, f"ValueError: hyperopt_mongodb_dbname '{LONG_DBNAME}' {DBNAME_MESSAGE}")
    assert "Hyperopt MongoDB server" not in out  # stopped in preflight, before the server play


def test_million_workers_through_ansible_playbook_fail_at_once_and_leave_cluster_untouched(
    untouched: LocalInventory,
) -> None:
    proc = untouched.playbook("site.yml", "-e", "hyperopt_worker_count=1000000", check=False)
    out = _failed_with(proc, f"ValueError: {COUNT_MESSAGE}")
    # refused in the pre-check, before the server play and long before placing any worker
    assert "ask for at most 256 workers" in out and "Hyperopt MongoDB server" not in out


def test_overlong_dbname_through_the_facade_raises_before_ansible_runs(untouched: LocalInventory) -> None:
    with pytest.raises(ValueError, match=f"dbname '{LONG_DBNAME}' {DBNAME_MESSAGE}"):
        HyperoptCluster(str(untouched.path), dbname=LONG_DBNAME)


def test_million_workers_through_the_facade_raise_value_error_and_leave_cluster_untouched(
    untouched: LocalInventory,
) -> None:
    cluster = HyperoptCluster(str(untouched.path))
    with pytest.raises(ValueError, match=COUNT_MESSAGE):
        cluster.start(worker_count=10**6)
    with pytest.raises(ValueError, match=COUNT_MESSAGE):
        RoundRobinLauncher(str(untouched.path)).start(10**6)


def test_bad_inputs_through_the_cli_exit_2_with_the_message(untouched: LocalInventory) -> None:
    cli = [str(BIN / "pyhoptcluster"), "up", "-i", str(untouched.path)]
    for extra, message in (
        (["--dbname", LONG_DBNAME], DBNAME_MESSAGE),
        (["--workers", "1000000"], COUNT_MESSAGE),
    ):
        proc = subprocess.run([*cli, *extra], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert message in proc.stderr and "Traceback" not in proc.stderr


OWN_PLAYBOOK = """\
- name: Our database server
  hosts: hyperopt_master
  gather_facts: false
  roles:
    - role: pyhoptcluster.cluster.hyperopt_mongodb

- name: Our workers
  hosts: hyperopt_workers
  gather_facts: false
  roles:
    - role: pyhoptcluster.cluster.hyperopt_worker
"""


def _own_playbook(inv: LocalInventory, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """An ops team's playbook that reuses the roles (no preflight.yml), run from their own directory."""
    playbook = tmp_path / "ours.yml"
    playbook.write_text(OWN_PLAYBOOK)
    env = {
        **os.environ,
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_COLLECTIONS_PATH": str(ROOT / "collections"),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    cmd = [str(BIN / "ansible-playbook"), str(playbook), "-i", str(inv.path), *extra]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)


def test_roles_in_own_playbook_refuse_overlong_dbname_before_touching_the_server(
    untouched: LocalInventory, tmp_path: Path
) -> None:
    proc = _own_playbook(untouched, tmp_path, "-e", f"hyperopt_mongodb_dbname={LONG_DBNAME}")
    out = _failed_with(proc, DBNAME_MESSAGE)
    assert "Check the database name and the ports" in out


def test_roles_in_own_playbook_refuse_a_million_workers_before_placing_them(
    untouched: LocalInventory, tmp_path: Path
) -> None:
    proc = _own_playbook(untouched, tmp_path, "-e", "hyperopt_worker_count=1000000")
    _failed_with(proc, COUNT_MESSAGE)
