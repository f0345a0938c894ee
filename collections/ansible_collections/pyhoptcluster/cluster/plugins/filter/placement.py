# -*- coding: utf-8 -*-
# Copyright: pyhoptcluster developers
# Apache License 2.0 (see LICENSE)
"""Worker placement: which worker ids run on which host."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
name: round_robin
short_description: Spread worker ids 1..count over hosts, round robin
description:
  - Worker ids are 1-based. Worker 1 goes to the first host, worker 2 to the second, and so on,
    wrapping around after the last host (worker i runs on host number (i - 1) modulo the host count).
  - Returns a dict with every host as a key, hosts that get no worker map to an empty list.
version_added: "0.1.0"
positional: count
options:
  _input:
    description: Host names in placement order (inventory order of the worker group).
    type: list
    elements: str
    required: true
  count:
    description: Number of workers, an integer >= 1 (strings of digits are accepted).
    type: int
    required: true
"""

EXAMPLES = r"""
- name: Worker ids of this host
  ansible.builtin.set_fact:
    hyperopt_worker_instances: "{{ (groups['hyperopt_workers'] | pyhoptcluster.cluster.round_robin(5))[inventory_hostname] }}"
# hosts [a, b] and count 5 give {a: [1, 3, 5], b: [2, 4]}
"""

RETURN = r"""
_value:
  description: Host name to the sorted list of its worker ids.
  type: dict
"""

from ansible.errors import AnsibleFilterError


def _as_count(count):
    if isinstance(count, bool):
        raise AnsibleFilterError("round_robin: count must be an integer >= 1, got %r" % (count,))
    if isinstance(count, int):
        value = count
    elif isinstance(count, float) and count.is_integer():
        value = int(count)
    elif isinstance(count, str) and count.strip().isdigit():
        value = int(count.strip())
    else:
        raise AnsibleFilterError("round_robin: count must be an integer >= 1, got %r" % (count,))
    if value < 1:
        raise AnsibleFilterError("round_robin: count must be an integer >= 1, got %d" % value)
    return value


def round_robin(hosts, count):
    """{host: [ids]} with worker i (1-based) on hosts[(i - 1) % len(hosts)]."""
    if isinstance(hosts, str) or not hasattr(hosts, "__iter__"):
        raise AnsibleFilterError("round_robin: expected a list of host names, got %r" % (hosts,))
    hosts = [str(h) for h in hosts]
    if not hosts:
        raise AnsibleFilterError("round_robin: no hosts to place workers on (is the worker group empty?)")
    if len(set(hosts)) != len(hosts):
        raise AnsibleFilterError("round_robin: a host is listed twice: %s" % hosts)
    n = _as_count(count)
    placement = dict((h, []) for h in hosts)
    for worker_id in range(1, n + 1):
        placement[hosts[(worker_id - 1) % len(hosts)]].append(worker_id)
    return placement


class FilterModule(object):
    def filters(self):
        return {"round_robin": round_robin}
