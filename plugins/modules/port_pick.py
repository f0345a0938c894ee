#!/usr/bin/python
# Copyright: pyhoptcluster developers
# Apache License 2.0 (see galaxy.yml)
# ruff: noqa: E402 -- Ansible modules put DOCUMENTATION/EXAMPLES/RETURN before the imports
"""Choose the port the MongoDB-protocol server will listen on, on the host where it runs."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: port_pick
short_description: Choose a free TCP port for the cluster's server on the host where it runs
version_added: "0.1.0"
description:
  - Tests each candidate port by binding a listening-style socket (with C(SO_REUSEADDR), as MongoDB
    servers do) on O(host), so a port in C(TIME_WAIT) counts as free and a port held by any listener,
    including a wildcard one, counts as taken.
  - One element in O(ports) means "this port or fail"; several mean "the first free one".
  - The port our own running server already holds (O(owned_port)) counts as free. If it is one of
    O(ports) it is chosen even when an earlier candidate has become free since, so that re-running
    the role never moves a running server.
  - Read-only, never reports a change.
options:
  host:
    description: Address the server will bind to. The check binds the same address.
    type: str
    default: 127.0.0.1
  also_free_on:
    description:
      - More addresses on which a chosen port must be free too, e.g. 127.0.0.1, where the role's
        no-auth bootstrap server briefly listens on the same port.
    type: list
    elements: str
    default: []
  ports:
    description:
      - Candidate ports, in order of preference.
      - With a single element the module fails with C(PortInUseError) when it is taken; with several
        it fails with C(NoPortsLeftError) when none is free.
    type: list
    elements: int
    required: true
  owned_port:
    description:
      - The port our own running server currently listens on. Pass it only when that server is known
        to be running; it then counts as free.
    type: int
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
author:
  - pyhoptcluster developers
"""

EXAMPLES = r"""
- name: Use port 27017 or fail
  pyhoptcluster.cluster.port_pick:
    host: 127.0.0.1
    ports: [27017]

- name: First free port of a range, keeping the one our running server holds
  pyhoptcluster.cluster.port_pick:
    host: 10.231.0.1
    ports: "{{ [27017] + range(27018, 27100) | list }}"
    owned_port: 27020
  register: picked
"""

RETURN = r"""
port:
  description: The chosen port.
  returned: success
  type: int
  sample: 27017
taken:
  description: The candidates found taken before the chosen one (all of them on failure).
  returned: always
  type: list
  elements: int
  sample: [27017]
"""

import errno
import socket

from ansible.module_utils.basic import AnsibleModule


class _AddressError(Exception):
    """The bind address itself is unusable on this host (not a port problem)."""


def _is_free(host: str, port: int) -> bool:
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise _AddressError(f"cannot resolve bind address {host!r}: {exc}") from exc
    family, socktype, proto, _canon, sockaddr = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(1)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return False
        if exc.errno == errno.EACCES:
            raise _AddressError(
                f"binding port {port} needs privileges this user lacks; use a port >= 1024"
            ) from exc
        if exc.errno == errno.EADDRNOTAVAIL:
            raise _AddressError(
                f"{host!r} is not an address of this host ({socket.gethostname()}); "
                "set hyperopt_mongodb_bind_addresses to one of its addresses"
            ) from exc
        raise _AddressError(f"cannot bind {host}:{port}: {exc.strerror}") from exc
    finally:
        sock.close()
    return True


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "host": {"type": "str", "default": "127.0.0.1"},
            "ports": {"type": "list", "elements": "int", "required": True},
            "owned_port": {"type": "int"},
            "also_free_on": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    host = module.params["host"]
    ports = module.params["ports"]
    owned = module.params["owned_port"]
    hosts = [host] + [h for h in module.params["also_free_on"] if h != host]
    where = f"{' and '.join(hosts)} (host {socket.gethostname()})"

    if not ports:
        module.fail_json(msg="ValueError: ports is empty; give a port or a list of ports", taken=[])
    bad = [p for p in ports if not 0 < p < 65536]
    if bad:
        module.fail_json(msg=f"ValueError: not TCP ports: {bad}; use numbers in 1..65535", taken=[])

    if owned is not None and owned in ports:
        module.exit_json(changed=False, port=owned, taken=[])

    taken = []
    try:
        for port in ports:
            if all(_is_free(h, port) for h in hosts):
                module.exit_json(changed=False, port=port, taken=taken)
            taken.append(port)
    except _AddressError as exc:
        module.fail_json(msg=f"ValueError: {exc}", taken=taken)

    if len(ports) == 1:
        module.fail_json(
            msg=f"PortInUseError: port {ports[0]} is taken on {where}; "
            "pass another port, or a list of ports to take the first free one",
            taken=taken,
        )
    module.fail_json(
        msg=f"NoPortsLeftError: none of the {len(ports)} ports {_describe(ports)} is free on {where}; "
        "pass other ports or stop what holds them",
        taken=taken,
    )


def _describe(ports: list[int]) -> str:
    if len(ports) > 2 and ports == list(range(ports[0], ports[0] + len(ports))):
        return f"{ports[0]}..{ports[-1]}"
    if len(ports) > 6:
        return ", ".join(str(p) for p in ports[:5]) + f", ... {ports[-1]}"
    return ", ".join(str(p) for p in ports)


if __name__ == "__main__":
    main()
