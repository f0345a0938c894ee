"""Round-robin placement of worker ids (the collection's round_robin filter, called directly)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError

_PLUGIN = (
    Path(__file__).resolve().parents[2]
    / "collections/ansible_collections/pyhoptcluster/cluster/plugins/filter/placement.py"
)
_spec = importlib.util.spec_from_file_location("pyhoptcluster_placement", _PLUGIN)
placement = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(placement)
round_robin = placement.round_robin


def test_one_worker_per_host_by_default_count():
    assert round_robin(["a", "b", "c"], 3) == {"a": [1], "b": [2], "c": [3]}


def test_more_workers_than_hosts_wrap_around_in_host_order():
    assert round_robin(["a", "b"], 5) == {"a": [1, 3, 5], "b": [2, 4]}


def test_fewer_workers_than_hosts_leave_later_hosts_empty():
    assert round_robin(["a", "b", "c"], 1) == {"a": [1], "b": [], "c": []}


def test_worker_i_runs_on_host_i_minus_one_modulo_n():
    hosts = [f"h{k}" for k in range(4)]
    result = round_robin(hosts, 11)
    for worker_id in range(1, 12):
        assert worker_id in result[hosts[(worker_id - 1) % 4]]
    assert sorted(i for ids in result.values() for i in ids) == list(range(1, 12))


def test_count_given_as_digit_string_from_extra_vars():
    assert round_robin(["a"], "2") == {"a": [1, 2]}


def test_scaling_down_keeps_the_low_ids_where_they_were():
    big, small = round_robin(["a", "b"], 4), round_robin(["a", "b"], 1)
    assert set(small["a"]) <= set(big["a"]) and small["b"] == []


@pytest.mark.parametrize("count", [0, -1, "0", "two", 2.5, True, None, "1.5"])
def test_count_below_one_or_not_an_int_is_rejected(count):
    with pytest.raises(AnsibleFilterError, match="integer >= 1"):
        round_robin(["a", "b"], count)


def test_empty_host_list_is_rejected():
    with pytest.raises(AnsibleFilterError, match="no hosts"):
        round_robin([], 2)


def test_duplicate_host_is_rejected():
    with pytest.raises(AnsibleFilterError, match="twice"):
        round_robin(["a", "a"], 2)
