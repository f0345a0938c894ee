# -*- coding: utf-8 -*-
# Copyright: pyhoptcluster developers
# Apache License 2.0 (see LICENSE)
"""Worker placement (which worker ids run on which host) and the argv of the workers' ssh tunnels.

Documentation: round_robin.yml and ssh_tunnel_argv.yml next to this file (one per filter)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import shlex
from fractions import Fraction

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


def _as_cap(host, value):
    """None (no cap) or an int >= 0."""
    if value is None or (isinstance(value, str) and value.strip() in ("", "None", "null")):
        return None
    if not isinstance(value, bool):
        if isinstance(value, int):
            number = value
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        elif isinstance(value, str) and value.strip().isdigit():
            number = int(value.strip())
        else:
            number = -1
        if number >= 0:
            return number
    raise AnsibleFilterError(
        "ValueError: hyperopt_worker_max of %s must be an integer >= 0 (or unset for no cap), got %r"
        % (host, value)
    )


def _as_weight(host, value):
    """A Fraction > 0 (exact, so ties between hosts are broken the same way on every run)."""
    if value is None or (isinstance(value, str) and value.strip() in ("", "None", "null")):
        return Fraction(1)
    if not isinstance(value, bool):
        try:
            weight = Fraction(str(value).strip())
        except (ValueError, ZeroDivisionError):
            weight = Fraction(0)
        if weight > 0:
            return weight
    raise AnsibleFilterError(
        "ValueError: hyperopt_worker_weight of %s must be a number > 0, got %r" % (host, value)
    )


def _per_host(values, hosts, name, convert):
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise AnsibleFilterError(
            "round_robin: %s must be a dict of host name to value, got %r" % (name, values)
        )
    return dict((h, convert(h, values.get(h))) for h in hosts)


def round_robin(hosts, count, caps=None, weights=None):
    """{host: [ids]}: worker i (1-based) on hosts[(i - 1) % len(hosts)] without caps and weights;
    with them, each worker goes to the open host furthest behind its weighted share."""
    if isinstance(hosts, str) or not hasattr(hosts, "__iter__"):
        raise AnsibleFilterError("round_robin: expected a list of host names, got %r" % (hosts,))
    hosts = [str(h) for h in hosts]
    if not hosts:
        raise AnsibleFilterError("round_robin: no hosts to place workers on (is the worker group empty?)")
    if len(set(hosts)) != len(hosts):
        raise AnsibleFilterError("round_robin: a host is listed twice: %s" % hosts)
    n = _as_count(count)
    cap = _per_host(caps, hosts, "caps", _as_cap)
    weight = _per_host(weights, hosts, "weights", _as_weight)
    if all(c is not None for c in cap.values()) and n > sum(cap.values()):
        raise AnsibleFilterError(
            "ValueError: %d workers do not fit on the worker hosts: their hyperopt_worker_max caps are %s "
            "(%d in all); ask for at most %d workers, raise a cap, or leave a host without a cap"
            % (n, ", ".join("%s=%d" % (h, cap[h]) for h in hosts), sum(cap.values()), sum(cap.values()))
        )
    placement = dict((h, []) for h in hosts)
    last = len(hosts) - 1
    for worker_id in range(1, n + 1):
        # The open host furthest behind its share gets the worker: the smallest (workers + 1) / weight,
        # ties going to the first one after the previous worker's host (cyclically). With equal
        # weights that is plain round robin that skips full hosts.
        best = None
        for offset in range(1, len(hosts) + 1):
            index = (last + offset) % len(hosts)
            host = hosts[index]
            if cap[host] is not None and len(placement[host]) >= cap[host]:
                continue
            key = (len(placement[host]) + 1) / weight[host]
            if best is None or key < best[0]:
                best = (key, index)
        last = best[1]
        placement[hosts[last]].append(worker_id)
    return placement


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
