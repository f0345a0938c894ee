"""End to end on inventories/local: real playbooks, real SecantusDB server, real workers, real fmin.

Both ways in are exercised: ``ansible-playbook site.yml`` and ``HyperoptCluster(...).start()``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import pymongo
import pytest
from hyperopt.fmin import FMinIter
from local_cluster import (
    BIN,
    LocalInventory,
    all_cmdlines,
    free_port,
    make_local_inventory,
    port_is_free,
    run_fmin,
    wait_gone,
)

from pyhoptcluster import HyperoptCluster
from pyhoptcluster.errors import InventoryError, MasterStartError, NoPortsLeftError, PortInUseError

pytestmark = pytest.mark.integration


def quadratic(x: float) -> float:
    return (x - 1.5) ** 2


# The workers the roles start cannot import this test module: pickle its functions by value, as
# cloudpickle does for functions defined in a notebook or a script's __main__.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture
def inventory(tmp_path: Path) -> Iterator[LocalInventory]:
    inv = make_local_inventory(tmp_path, hyperopt_mongodb_port=free_port())
    try:
        yield inv
    finally:
        inv.playbook("stop.yml", check=False)
        inv.kill_leftovers()


def _changed(output: str) -> dict[str, int]:
    return {h: int(n) for h, n in re.findall(r"^(\S+)\s*:\s*ok=\d+\s+changed=(\d+)", output, re.M)}


def test_ansible_playbook_way_in_runs_a_distributed_fmin_and_stops_clean(inventory: LocalInventory) -> None:
    first = inventory.playbook("site.yml", "-e", "hyperopt_worker_count=2")
    info = json.loads((inventory.state_dir / "server.json").read_text())
    port = int(info["port"])
    password = (inventory.state_dir / "mongodb.password").read_text().strip()
    assert password and password not in first.stdout + first.stderr

    # an unauthenticated client is refused
    anonymous = pymongo.MongoClient("127.0.0.1", port, serverSelectionTimeoutMS=5000)
    with pytest.raises(pymongo.errors.OperationFailure):
        anonymous["hyperopt"]["jobs"].insert_one({"x": 1})

    # a second run changes nothing
    second = inventory.playbook("site.yml", "-e", "hyperopt_worker_count=2")
    assert set(_changed(second.stdout).values()) == {0}, second.stdout

    url = f"mongo://{info['username']}:{password}@127.0.0.1:{port}/{info['dbname']}/jobs"
    trials = run_fmin(url, "ansible-way", 30, workers=2, objective=quadratic)
    assert len(trials.trials) == 30
    assert all(t["state"] == 2 and isinstance(t["result"]["loss"], float) for t in trials.trials)
    assert len({str(t["owner"]) for t in trials.trials}) == 2, "both workers took jobs"
    assert password not in all_cmdlines()

    pids = list(inventory.pids().values())
    assert len(pids) == 3, inventory.pids()  # server + 2 workers, programs of one supervisord
    supervisord = inventory.supervisor.supervisord_pid()
    assert supervisord is not None
    inventory.playbook("stop.yml")
    assert wait_gone([*pids, supervisord]) == [], "stop leaves no process behind"
    assert port_is_free(port)


def test_facade_way_in_runs_a_distributed_fmin_and_cleanup_frees_everything(
    inventory: LocalInventory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # fmin's driver (hyperopt's FMinIter) runs with the trials object's poll interval: recorded by a
    # spy that calls the real run()
    polls: list[float] = []
    real_run = FMinIter.run

    def spy(self, *args, **kwargs):
        polls.append(self.poll_interval_secs)
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(FMinIter, "run", spy)
    port = free_port()
    with HyperoptCluster(str(inventory.path)) as cluster:
        cluster.start(worker_count=2, master_port=port)
        assert cluster.master_port == port
        assert cluster.workers_per_host == {"localhost": [1, 2]}
        assert cluster.mongo_url.startswith("mongo://pyhoptcluster:")
        assert cluster.mongo_trial_url.endswith(f"@127.0.0.1:{port}/hyperopt/jobs")
        trials = run_fmin(
            cluster.mongo_trial_url, "facade-way", 30, workers=2, objective=quadratic, poll_interval=0.2
        )
        assert sum(1 for t in trials.trials if t["state"] == 2 and "loss" in t["result"]) == 30
        assert polls == [0.2]
        pids = [*inventory.pids().values(), inventory.supervisor.supervisord_pid()]
        assert len(pids) == 4 and all(pids)
        assert "***" in repr(cluster) and cluster.info.password() not in repr(cluster)
    assert wait_gone(pids) == []
    assert port_is_free(port)


def test_taken_single_port_raises_port_in_use(inventory: LocalInventory) -> None:
    with socket_bound() as port:
        cluster = HyperoptCluster(str(inventory.path))
        with pytest.raises(PortInUseError, match=str(port)):
            cluster.start_master(master_port=port)
    assert inventory.pids() == {}


def test_port_list_with_none_free_raises_no_ports_left(inventory: LocalInventory) -> None:
    with socket_bound() as p1, socket_bound() as p2:
        cluster = HyperoptCluster(str(inventory.path))
        with pytest.raises(NoPortsLeftError):
            cluster.start_master(master_port=[p1, p2])
    assert inventory.pids() == {}


def test_port_list_takes_first_free_and_returns(inventory: LocalInventory) -> None:
    with socket_bound() as taken:
        cluster = HyperoptCluster(str(inventory.path))
        free = free_port()
        cluster.start_master(master_port=[taken, free])
        assert cluster.master_port == free
        cluster.cleanup()


def test_server_not_answering_in_time_raises_master_start_error_and_stops_it(tmp_path: Path) -> None:
    # A "mongod" that starts fine but never listens: the binary install method runs it as given.
    fake = tmp_path / "mongod"
    fake.write_text("#!/bin/sh\nexec sleep 600\n")
    fake.chmod(0o755)
    inv = make_local_inventory(
        tmp_path, hyperopt_mongodb_install_method="binary", hyperopt_mongodb_binary=str(fake)
    )
    try:
        cluster = HyperoptCluster(str(inv.path))
        with pytest.raises(MasterStartError, match="did not answer"):
            cluster.start_master(master_port=free_port(), timeout=2)
        assert inv.pids() == {}, "the server that did not answer was stopped again"
        assert str(fake) not in all_cmdlines()
    finally:
        inv.kill_leftovers()


def test_dbpath_not_creatable_raises_permission_error(inventory: LocalInventory, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cluster = HyperoptCluster(str(inventory.path), dbpath=blocker / "db")
    with pytest.raises(PermissionError, match="a-file"):
        cluster.start_master()
    assert inventory.pids() == {}


def test_inventory_without_worker_hosts_raises_inventory_error(tmp_path: Path) -> None:
    inv = make_local_inventory(tmp_path)
    hosts = inv.path / "hosts.yml"
    hosts.write_text(
        "all:\n  children:\n    hyperopt_master:\n      hosts:\n        localhost:\n"
        "          ansible_connection: local\n    hyperopt_workers:\n      hosts: {}\n"
    )
    with pytest.raises(InventoryError, match="hyperopt_workers"):
        HyperoptCluster(str(inv.path)).start()
    assert inv.pids() == {}


def test_role_variable_of_wrong_type_is_refused_by_argument_specs(inventory: LocalInventory) -> None:
    proc = inventory.playbook("site.yml", "-e", "hyperopt_worker_count=many", check=False)
    assert proc.returncode != 0
    assert "hyperopt_worker_count" in proc.stdout
    assert inventory.pids() == {}


def test_cli_up_prints_masked_urls_and_down_stops(inventory: LocalInventory) -> None:
    cli = [str(BIN / "pyhoptcluster")]
    up = subprocess.run(
        [*cli, "up", "-i", str(inventory.path), "--workers", "1"], capture_output=True, text=True, timeout=600
    )
    assert up.returncode == 0, up.stderr
    password = (inventory.state_dir / "mongodb.password").read_text().strip()
    assert password not in up.stdout + up.stderr
    assert "mongo://pyhoptcluster:***@127.0.0.1:" in up.stdout
    assert "workers on localhost: 1" in up.stdout
    pids = [*inventory.pids().values(), inventory.supervisor.supervisord_pid()]
    assert len(pids) == 3 and all(pids)
    down = subprocess.run(
        [*cli, "down", "-i", str(inventory.path)], capture_output=True, text=True, timeout=600
    )
    assert down.returncode == 0, down.stderr
    assert wait_gone(pids) == []


def test_cli_reports_bad_input_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pyhoptcluster.control.cli", "up", "-i", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "InventoryError" in proc.stderr and "Traceback" not in proc.stderr


class socket_bound:
    """Hold a loopback port open (listening) for the duration of a with-block."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def test_inventory_error_for_missing_path_names_it(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="missing"):
        HyperoptCluster(tmp_path / "missing")
