# -*- coding: utf-8 -*-
# Copyright: pyhoptcluster developers
# Apache License 2.0 (see LICENSE)
"""Worker placement (which worker ids run on which host) and the argv of the workers' ssh tunnels.

Documentation: round_robin.yml and ssh_tunnel_argv.yml next to this file (one per filter)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import heapq
import shlex
from bisect import bisect_right, insort

from ansible.errors import AnsibleFilterError
from ansible_collections.pyhoptcluster.cluster.plugins.module_utils import rules


def round_robin(hosts, count, caps=None, weights=None):
    """{host: [ids]}: worker i (1-based) on hosts[(i - 1) % len(hosts)] without caps and weights;
    with them, each worker goes to the open host furthest behind its weighted share.

    The input rules (count, caps, weights, and that the workers fit: pyhoptcluster.validation) are
    checked first, so the loop below always ends. It takes O(count log hosts): the open hosts are
    grouped by their key (workers + 1) / weight, the groups' keys are in a heap."""
    try:
        validation = rules.load()
        hosts, n, cap, weight = validation.check_placement(hosts, count, caps, weights)
    except ImportError as exc:
        raise AnsibleFilterError("round_robin: %s" % exc) from None
    except ValueError as exc:
        raise AnsibleFilterError("ValueError: %s" % exc) from None
    placed = [[] for _ in hosts]
    # key -> sorted indices of the open hosts with that key; a heap of the keys (stale ones skipped)
    groups, keys = {}, []

    def open_host(index):
        if len(placed[index]) >= cap[hosts[index]]:
            return  # full: it leaves the placement
        key = (len(placed[index]) + 1) / weight[hosts[index]]
        if key not in groups:
            groups[key] = []
            heapq.heappush(keys, key)
        insort(groups[key], index)

    for index in range(len(hosts)):
        open_host(index)
    last = len(hosts) - 1
    for worker_id in range(1, n + 1):
        # The open host furthest behind its share gets the worker: the smallest key, ties going to
        # the first one after the previous worker's host (cyclically). With equal weights that is
        # plain round robin that skips full hosts.
        while not groups.get(keys[0]):
            groups.pop(heapq.heappop(keys), None)
        group = groups[keys[0]]
        at = bisect_right(group, last)
        last = group.pop(at if at < len(group) else 0)
        placed[last].append(worker_id)
        open_host(last)
    return dict(zip(hosts, placed, strict=True))


def _bracket(host):
    host = str(host)
    return "[%s]" % host if ":" in host and not host.startswith("[") else host


def ssh_tunnel_argv(spec):
    """argv of `ssh -N -R 127.0.0.1:<listen_port>:<target_host>:<target_port> [user@]host` that makes
    the server reachable on a worker host's loopback, built from the host's Ansible ssh settings.

    spec keys: host (required), user, port, private_key_file, ssh_args, common_args, extra_args (str,
    split like a shell does), listen_port, target_host, target_port (required), host_key_checking
    (bool, default true), executable (default "ssh"). Password authentication is never used
    (BatchMode=yes): the tunnel needs a key or an ssh agent.
    """
    if not isinstance(spec, dict):
        raise AnsibleFilterError("ssh_tunnel_argv: expected a dict, got %r" % (spec,))
    for key in ("host", "listen_port", "target_host", "target_port"):
        if spec.get(key) in (None, ""):
            raise AnsibleFilterError("ssh_tunnel_argv: %s is required" % key)
    try:
        listen_port, target_port = int(spec["listen_port"]), int(spec["target_port"])
    except (TypeError, ValueError):
        raise AnsibleFilterError("ssh_tunnel_argv: listen_port and target_port must be integers") from None
    # ssh uses the first value it gets for an option: ours come first, so ControlMaster/ControlPersist
    # from the Ansible ssh_args cannot turn the tunnel into a multiplexed (and detached) session.
    argv = [
        str(spec.get("executable") or "ssh"),
        "-N",
        "-o", "ExitOnForwardFailure=yes",
        "-o", "BatchMode=yes",
        "-o", "ServerAliveInterval=15",
        "-o", "ServerAliveCountMax=3",
        "-o", "ControlMaster=no",
        "-o", "ControlPath=none",
    ]  # fmt: skip
    if spec.get("host_key_checking") in (False, "False", "false", "no", "0"):
        argv += ["-o", "StrictHostKeyChecking=no"]
    if spec.get("port") not in (None, ""):
        argv += ["-p", str(int(spec["port"]))]
    if spec.get("private_key_file"):
        argv += ["-i", str(spec["private_key_file"])]
    for key in ("ssh_args", "common_args", "extra_args"):
        if spec.get(key):
            argv += shlex.split(str(spec[key]))
    argv += ["-R", "127.0.0.1:%d:%s:%d" % (listen_port, _bracket(spec["target_host"]), target_port)]
    user = spec.get("user")
    argv.append(("%s@%s" % (user, spec["host"])) if user else str(spec["host"]))
    return argv


class FilterModule(object):
    def filters(self):
        return {"round_robin": round_robin, "ssh_tunnel_argv": ssh_tunnel_argv}
