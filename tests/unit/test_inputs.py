"""Bad input is refused before anything starts, with a message that names the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyhoptcluster import HyperoptCluster
from pyhoptcluster.errors import InventoryError
from pyhoptcluster.inventory import from_host_names, normalize
from pyhoptcluster.validation import check_dbname, check_ports, check_worker_count


def test_missing_inventory_path_raises(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="does not exist"):
        HyperoptCluster(tmp_path / "nope.yml")


def test_empty_inventory_file_raises(tmp_path: Path) -> None:
    empty = tmp_path / "hosts.yml"
    empty.write_text("  \n")
    with pytest.raises(InventoryError, match="is empty"):
        HyperoptCluster(empty)


def test_empty_host_list_raises() -> None:
    with pytest.raises(InventoryError, match="empty"):
        HyperoptCluster([])


def test_host_list_becomes_master_plus_workers_in_order() -> None:
    inv = from_host_names(["n2", "n1", "localhost"])
    groups = inv["all"]["children"]
    assert list(groups["hyperopt_workers"]["hosts"]) == ["n2", "n1", "localhost"]
    assert groups["hyperopt_workers"]["hosts"]["localhost"]["ansible_connection"] == "local"
    assert list(groups["hyperopt_master"]["hosts"]) == ["localhost"]


def test_duplicate_host_names_raise() -> None:
    with pytest.raises(InventoryError, match="twice"):
        from_host_names(["a", "a"])


def test_path_inventory_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "hosts.yml").write_text("all: {}\n")
    monkeypatch.chdir(tmp_path)
    assert normalize("hosts.yml") == str(tmp_path / "hosts.yml")


@pytest.mark.parametrize("name", ["", "my.db", "a/b", "with space", "dollar$", 'q"uote'])
def test_forbidden_dbname_raises_value_error(name: str) -> None:
    with pytest.raises(ValueError, match="dbname"):
        check_dbname(name)
    with pytest.raises(ValueError, match="dbname"):
        HyperoptCluster(["localhost"], dbname=name)


@pytest.mark.parametrize("count", [0, -1, 1.5, True, "2"])
def test_bad_worker_count_raises_before_anything_starts(count: object) -> None:
    with pytest.raises(ValueError, match="worker_count"):
        check_worker_count(count)  # type: ignore[arg-type]
    cluster = HyperoptCluster(["localhost"])
    with pytest.raises(ValueError, match="worker_count"):
        cluster.start(worker_count=count)  # type: ignore[arg-type]
    assert cluster.master_port is None


def test_port_forms() -> None:
    assert check_ports(27017) == 27017
    assert check_ports((27017, 27018)) == [27017, 27018]
    for bad in (0, 70000, [], "27017", [1, "x"]):
        with pytest.raises(ValueError, match="port"):
            check_ports(bad)  # type: ignore[arg-type]


def test_bad_poll_interval_raises() -> None:
    with pytest.raises(ValueError, match="poll"):
        HyperoptCluster(["localhost"], worker_poll_intervall=0)


def test_properties_before_start_say_what_to_do() -> None:
    cluster = HyperoptCluster(["localhost"])
    assert cluster.master_port is None
    assert "not started" in repr(cluster)
    with pytest.raises(Exception, match="start"):
        _ = cluster.mongo_trial_url
