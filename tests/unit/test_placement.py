"""Worker placement (round robin, per-host caps and weights) and the ssh tunnel argv: the collection's
filters, called directly."""

from __future__ import annotations

import sys
from fractions import Fraction
from itertools import product
from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError

# the collection's plugins import its module_utils as ansible_collections.pyhoptcluster.cluster.*
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "collections"))
from ansible_collections.pyhoptcluster.cluster.plugins.filter import placement

from pyhoptcluster.validation import MAX_WORKERS_PER_HOST

round_robin = placement.round_robin
ssh_tunnel_argv = placement.ssh_tunnel_argv


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


# -- per-host caps (hyperopt_worker_max) and weights (hyperopt_worker_weight) ----------------------


def _skip_full_hosts_reference(hosts, count, caps):
    """What caps promise: the next host in the cycle after the previous worker's one, full ones skipped."""
    result, index = {h: [] for h in hosts}, -1
    for worker_id in range(1, count + 1):
        for _ in hosts:
            index = (index + 1) % len(hosts)
            host = hosts[index]
            if caps.get(host) is None or len(result[host]) < caps[host]:
                result[host].append(worker_id)
                break
    return result


def test_no_caps_and_no_weights_keeps_worker_i_on_host_i_minus_one_modulo_n():
    hosts = ["a", "b", "c"]
    assert round_robin(hosts, 7, caps={}, weights={}) == round_robin(hosts, 7)
    assert round_robin(hosts, 7, caps={"a": None}, weights={"b": None}) == {
        "a": [1, 4, 7],
        "b": [2, 5],
        "c": [3, 6],
    }


def test_a_full_host_is_skipped_and_the_others_continue_round_robin():
    assert round_robin(["a", "b", "c"], 5, caps={"a": 1}) == {"a": [1], "b": [2, 4], "c": [3, 5]}


def test_a_cap_of_zero_keeps_a_host_empty():
    assert round_robin(["a", "b", "c"], 4, caps={"b": 0}) == {"a": [1, 3], "b": [], "c": [2, 4]}


def test_caps_follow_the_skip_full_hosts_rule_for_every_shape():
    for n_hosts in range(1, 5):
        hosts = [f"h{k}" for k in range(n_hosts)]
        for cap_values in product([None, 0, 1, 2], repeat=n_hosts):
            caps = dict(zip(hosts, cap_values, strict=True))
            limit = 9 if None in cap_values else sum(cap_values)
            for count in range(1, limit + 1):
                assert round_robin(hosts, count, caps=caps) == _skip_full_hosts_reference(hosts, count, caps)


def test_count_above_the_sum_of_caps_fails_naming_every_cap():
    with pytest.raises(AnsibleFilterError) as err:
        round_robin(["a", "b", "c"], 7, caps={"a": 1, "b": 2, "c": 3})
    message = str(err.value)
    assert message.startswith("ValueError: 7 workers do not fit")
    assert "a=1, b=2, c=3" in message and "6 in all" in message and "at most 6" in message


def test_a_host_without_cap_takes_what_the_capped_ones_cannot():
    assert round_robin(["a", "b"], 6, caps={"a": 1}) == {"a": [1], "b": [2, 3, 4, 5, 6]}


def test_count_equal_to_the_sum_of_caps_fills_every_host():
    assert round_robin(["a", "b"], 3, caps={"a": 1, "b": 2}) == {"a": [1], "b": [2, 3]}


def test_weights_give_hosts_their_share():
    result = round_robin(["a", "b", "c"], 40, weights={"a": 2, "b": 1, "c": 1})
    assert [len(result[h]) for h in "abc"] == [20, 10, 10]
    assert round_robin(["a", "b"], 3, weights={"a": 2}) == {"a": [1, 3], "b": [2]}


def test_fractional_weights_and_weights_given_as_strings():
    assert round_robin(["a", "b"], 6, weights={"a": "0.5"}) == round_robin(["a", "b"], 6, weights={"b": 2})
    assert [len(ids) for ids in round_robin(["a", "b"], 6, weights={"a": 0.5}).values()] == [2, 4]


def test_equal_weights_are_plain_round_robin():
    assert round_robin(["a", "b", "c"], 8, weights={"a": 3, "b": 3, "c": 3}) == round_robin(
        ["a", "b", "c"], 8
    )


def test_weights_and_caps_together():
    result = round_robin(["a", "b", "c"], 8, caps={"a": 2}, weights={"a": 4})
    assert result["a"] == [1, 2] and sorted(result["b"] + result["c"]) == [3, 4, 5, 6, 7, 8]
    assert abs(len(result["b"]) - len(result["c"])) <= 1


@pytest.mark.parametrize(
    ("caps", "weights"),
    [
        ({}, {}),
        ({"a": 2}, {}),
        ({}, {"b": 3}),
        ({"a": 1, "c": 0}, {"b": 0.5}),
        ({"b": 4}, {"a": 2, "c": 1.5}),
    ],
)
def test_scaling_never_moves_a_worker(caps, weights):
    hosts = ["a", "b", "c"]
    where = {}
    for count in range(1, 12):
        for host, ids in round_robin(hosts, count, caps=caps, weights=weights).items():
            for worker_id in ids:
                assert where.setdefault(worker_id, host) == host, (count, worker_id)


def test_caps_given_as_digit_strings_from_extra_vars():
    assert round_robin(["a", "b"], 3, caps={"a": "1", "b": "None"}) == {"a": [1], "b": [2, 3]}


def test_caps_and_weights_of_hosts_not_placed_on_are_ignored():
    assert round_robin(["a"], 2, caps={"zz": 0}, weights={"zz": 5}) == {"a": [1, 2]}


@pytest.mark.parametrize("cap", [-1, "x", 1.5, True, "-2"])
def test_a_negative_or_non_integer_cap_is_rejected_naming_the_host(cap):
    with pytest.raises(
        AnsibleFilterError, match=r"ValueError: hyperopt_worker_max of b must be an integer >= 0"
    ):
        round_robin(["a", "b"], 2, caps={"b": cap})


@pytest.mark.parametrize("weight", [0, -1, "heavy", False, "0"])
def test_a_weight_not_above_zero_is_rejected_naming_the_host(weight):
    with pytest.raises(
        AnsibleFilterError, match=r"ValueError: hyperopt_worker_weight of a must be a number > 0"
    ):
        round_robin(["a", "b"], 2, weights={"a": weight})


def test_caps_must_be_a_dict():
    with pytest.raises(AnsibleFilterError, match="caps must be a dict"):
        round_robin(["a", "b"], 2, caps=[1, 2])


# -- the per-host limit and large counts --------------------------------------------------------------


def test_a_million_workers_are_refused_at_once_saying_how_many_fit():
    with pytest.raises(AnsibleFilterError) as err:
        round_robin(["a", "b", "c"], 10**6)
    message = str(err.value)
    assert message.startswith("ValueError: 1000000 workers do not fit on the 3 worker hosts")
    assert (
        f"at most {MAX_WORKERS_PER_HOST} workers" in message
        and f"at most {3 * MAX_WORKERS_PER_HOST}" in message
    )


def test_the_per_host_limit_applies_to_hosts_without_a_cap():
    with pytest.raises(AnsibleFilterError, match=r"ValueError: .*a=1; a host without a cap runs at most"):
        round_robin(["a", "b"], MAX_WORKERS_PER_HOST + 2, caps={"a": 1})
    assert len(round_robin(["a", "b"], MAX_WORKERS_PER_HOST + 1, caps={"a": 1})["b"]) == MAX_WORKERS_PER_HOST


def test_a_cap_above_the_per_host_limit_is_rejected():
    with pytest.raises(AnsibleFilterError, match=f"hyperopt_worker_max of a is {MAX_WORKERS_PER_HOST + 1}"):
        round_robin(["a"], 1, caps={"a": MAX_WORKERS_PER_HOST + 1})


def test_heavy_weight_host_fills_up_to_the_limit_and_the_rest_go_elsewhere():
    result = round_robin(["a", "b"], MAX_WORKERS_PER_HOST + 10, weights={"a": 100})
    assert len(result["a"]) == MAX_WORKERS_PER_HOST and len(result["b"]) == 10


def _placement_reference(hosts, count, caps, weights):
    """The placement rule written as plainly as possible (O(count * hosts))."""
    result, last = {h: [] for h in hosts}, len(hosts) - 1
    for worker_id in range(1, count + 1):
        best = None
        for offset in range(1, len(hosts) + 1):
            index = (last + offset) % len(hosts)
            host = hosts[index]
            if len(result[host]) >= caps.get(host, MAX_WORKERS_PER_HOST):
                continue
            key = Fraction(len(result[host]) + 1) / Fraction(str(weights.get(host, 1)))
            if best is None or key < best[0]:
                best = (key, index)
        last = best[1]
        result[hosts[last]].append(worker_id)
    return result


@pytest.mark.parametrize(
    ("caps", "weights"),
    [
        ({}, {}),
        ({"b": 3}, {}),
        ({}, {"a": 2, "c": 0.5}),
        ({"a": 0, "d": 5}, {"b": 3, "c": 1.5}),
        ({}, {"a": 3}),
    ],
)
def test_fast_placement_matches_the_plain_rule(caps, weights):
    hosts = ["a", "b", "c", "d"]
    limit = min(60, sum(caps.get(h, MAX_WORKERS_PER_HOST) for h in hosts))
    for count in range(1, limit + 1):
        assert round_robin(hosts, count, caps=caps, weights=weights) == _placement_reference(
            hosts, count, caps, weights
        )


def test_the_largest_valid_count_on_many_hosts_is_placed_completely():
    hosts = [f"h{k}" for k in range(50)]
    count = MAX_WORKERS_PER_HOST * len(hosts)
    result = round_robin(hosts, count, weights={"h0": 7})
    assert all(len(ids) == MAX_WORKERS_PER_HOST for ids in result.values())
    assert sorted(i for ids in result.values() for i in ids) == list(range(1, count + 1))


# -- ssh_tunnel_argv: the reverse tunnel of hyperopt_worker_ssh_tunnel --------------------------------


def test_tunnel_argv_forwards_the_hosts_loopback_port_to_the_server():
    argv = ssh_tunnel_argv(
        {
            "host": "10.0.0.11",
            "user": "root",
            "port": 2222,
            "private_key_file": "/keys/id_ed25519",
            "common_args": "-o StrictHostKeyChecking=no -o 'UserKnownHostsFile=/dev/null'",
            "listen_port": 27017,
            "target_host": "127.0.0.1",
            "target_port": 27301,
        }
    )
    assert argv[:2] == ["ssh", "-N"]
    assert argv[-3:] == ["-R", "127.0.0.1:27017:127.0.0.1:27301", "root@10.0.0.11"]
    assert argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-i") + 1] == "/keys/id_ed25519"
    assert "UserKnownHostsFile=/dev/null" in argv  # split like a shell, quotes removed
    for option in ("ExitOnForwardFailure=yes", "BatchMode=yes", "ControlMaster=no", "ControlPath=none"):
        assert option in argv


def test_tunnel_options_come_before_the_ansible_ssh_args_so_they_win():
    argv = ssh_tunnel_argv(
        {
            "host": "h",
            "listen_port": 1,
            "target_host": "s",
            "target_port": 2,
            "ssh_args": "-o ControlMaster=auto -o ControlPersist=60s",
        }
    )
    assert argv.index("ControlMaster=no") < argv.index("ControlMaster=auto")
    assert argv[-1] == "h"  # no user: ssh's own default, as Ansible does


def test_tunnel_to_an_ipv6_server_brackets_the_address():
    argv = ssh_tunnel_argv({"host": "h", "listen_port": 5, "target_host": "::1", "target_port": 6})
    assert "127.0.0.1:5:[::1]:6" in argv


def test_tunnel_without_host_key_checking_mirrors_ansible():
    spec = {"host": "h", "listen_port": 5, "target_host": "s", "target_port": 6}
    assert "StrictHostKeyChecking=no" not in ssh_tunnel_argv(spec)
    assert "StrictHostKeyChecking=no" in ssh_tunnel_argv({**spec, "host_key_checking": False})


@pytest.mark.parametrize("missing", ["host", "listen_port", "target_host", "target_port"])
def test_tunnel_argv_needs_host_and_ports(missing):
    spec = {"host": "h", "listen_port": 5, "target_host": "s", "target_port": 6}
    spec[missing] = ""
    with pytest.raises(AnsibleFilterError, match=f"{missing} is required"):
        ssh_tunnel_argv(spec)
