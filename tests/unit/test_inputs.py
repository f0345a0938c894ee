"""Bad input is refused before anything starts, with a message that names the problem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pyhoptcluster import HyperoptCluster, MasterLauncher
from pyhoptcluster.control.inventory import from_host_names, normalize
from pyhoptcluster.errors import InventoryError
from pyhoptcluster.validation import (
    MAX_DBNAME_BYTES,
    check_dbname,
    check_poll_interval,
    check_ports,
    check_worker_count,
)
from pyhoptcluster.worker.config import ConfigError, config_from_mapping

# the roles' way to the same rules: the collection's input_problems filter
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "collections"))
from ansible_collections.pyhoptcluster.cluster.plugins.filter.inputs import input_problems


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


def test_properties_before_start_say_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a home of its own: a cluster started earlier by this user (~/.local/share/pyhoptcluster) would
    # be attached to, which is the point of mongo_trial_url on a fresh object
    monkeypatch.setenv("HOME", str(tmp_path))
    cluster = HyperoptCluster(["localhost"])
    assert cluster.master_port is None
    assert "not started" in repr(cluster)
    with pytest.raises(Exception, match="start"):
        _ = cluster.mongo_trial_url


# -- each rule once: the facade, the roles' filter and the worker's config parser agree -------------


def test_overlong_dbname_is_refused_by_the_facade_and_the_role_filter_alike() -> None:
    name = "d" * (MAX_DBNAME_BYTES + 7)
    with pytest.raises(ValueError, match="is 70 bytes long, MongoDB allows at most 63 bytes") as err:
        HyperoptCluster(["localhost"], dbname=name)
    assert str(err.value).startswith("dbname ")
    [problem] = input_problems({"hyperopt_mongodb_dbname": name})
    assert problem == str(err.value).replace("dbname", "hyperopt_mongodb_dbname", 1)


def test_dbname_limit_counts_bytes_not_characters() -> None:
    assert check_dbname("d" * MAX_DBNAME_BYTES) == "d" * MAX_DBNAME_BYTES
    with pytest.raises(ValueError, match="64 bytes long"):
        check_dbname("\u00e9" * 32)  # 32 characters, 64 bytes


def test_role_filter_takes_the_strings_extra_vars_give() -> None:
    good = {
        "hyperopt_worker_count": "3",
        "hyperopt_worker_poll_interval": "0.5",
        "hyperopt_mongodb_port": "27017,27018",
        "hyperopt_worker_max": None,
        "hyperopt_worker_weight": "1.5",
    }
    assert input_problems(good, host="a", hosts=["a", "b"], caps={"a": "", "b": "2"}, weights={}) == []


def test_role_filter_refuses_a_million_workers_naming_the_limit() -> None:
    [problem] = input_problems({"hyperopt_worker_count": "1000000"}, host="a", hosts=["a", "b"])
    assert problem.startswith("1000000 workers do not fit on the 2 worker hosts")
    assert "ask for at most 512 workers" in problem


def test_role_filter_lists_every_broken_rule_once() -> None:
    problems = input_problems(
        {"hyperopt_worker_count": "0", "hyperopt_worker_poll_interval": "0", "hyperopt_mongodb_port": 70000},
        hosts=["a"],
    )
    assert problems == [
        "hyperopt_worker_count must be an integer >= 1, got '0'",
        "hyperopt_worker_poll_interval must be > 0 seconds, e.g. 0.1, got '0'",
        "hyperopt_mongodb_port: a port must be an integer from 1 to 65535, got 70000",
    ]


def test_role_filter_refuses_a_variable_it_has_no_rule_for() -> None:
    from ansible.errors import AnsibleFilterError

    with pytest.raises(AnsibleFilterError, match="no rule for hyperopt_worker_colour"):
        input_problems({"hyperopt_worker_colour": "blue"})


@pytest.mark.parametrize("value", [0, "0", -1, "nan", "inf", "fast"])
def test_zero_or_bad_poll_interval_is_refused_by_facade_role_and_worker(value: object) -> None:
    url = "mongo://u:p@127.0.0.1:27017/hyperopt/jobs"
    with pytest.raises(ConfigError, match="POLL_INTERVAL must be"):
        config_from_mapping({"HYPEROPT_WORKER_MONGO_URL": url, "HYPEROPT_WORKER_POLL_INTERVAL": str(value)})
    assert input_problems({"hyperopt_worker_poll_interval": value})
    if not isinstance(value, str):
        with pytest.raises(ValueError, match="worker_poll_intervall must be"):
            check_poll_interval(value)


def test_worker_count_digit_string_is_a_python_error_but_fine_from_extra_vars() -> None:
    with pytest.raises(ValueError, match="worker_count"):
        check_worker_count("2")
    assert check_worker_count("2", text=True) == 2


def test_port_text_forms_from_extra_vars() -> None:
    assert check_ports("27017", text=True) == [27017]
    assert check_ports("27017, 27018", text=True) == [27017, 27018]
    assert check_ports([27017, "27018"], text=True) == [27017, 27018]


def test_collection_loads_the_rules_without_importing_hyperopt() -> None:
    """The filters run in every Ansible worker process: the package's __init__ (hyperopt, ~2 s) stays out."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from ansible_collections.pyhoptcluster.cluster.plugins.filter.inputs import input_problems;"
        "print(input_problems({'hyperopt_mongodb_dbname': 'a.b'}));"
        "print('hyperopt' in sys.modules, 'pyhoptcluster' in sys.modules)"
    )
    collections = str(Path(__file__).resolve().parents[2] / "collections")
    out = subprocess.run(
        [sys.executable, "-c", code, collections], capture_output=True, text=True, check=True
    )
    assert "forbids" in out.stdout and out.stdout.splitlines()[-1] == "False False"


class _FixedMaster(MasterLauncher):
    """A custom strategy with only what the interface requires."""

    @property
    def port(self) -> int | None:
        return 4242

    def start(self, ports, timeout=None, debug=False) -> list[int]:
        return []

    def cleanup(self) -> None:
        pass


def test_mongo_launcher_is_lazyclusters_name_of_master_launcher(capsys) -> None:
    custom = _FixedMaster()
    cluster = HyperoptCluster(["localhost"], mongo_launcher=custom)
    assert cluster.master_port == 4242
    # a custom launcher gets the interface's defaults: nothing to print, nothing published
    cluster.print_log()
    assert capsys.readouterr().out == ""
    assert cluster.workers_per_host == {}
    with pytest.raises(ValueError, match="not both"):
        HyperoptCluster(["localhost"], master_launcher=_FixedMaster(), mongo_launcher=custom)
