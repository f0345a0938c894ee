#!/usr/bin/python
# Copyright: pyhoptcluster developers
# Apache License 2.0 (see galaxy.yml)
# ruff: noqa: E402 -- Ansible modules put DOCUMENTATION/EXAMPLES/RETURN before the imports
"""Wait until a MongoDB-protocol server answers ``ping`` (stdlib only: no pymongo needed)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: mongo_ping
short_description: Wait until a MongoDB-protocol server answers ping
version_added: "0.1.0"
description:
  - Sends the C(ping) command (an C(OP_MSG) on database C(admin)) to O(host):O(port) until the
    server answers C(ok=1) or O(timeout) seconds have passed, trying every O(interval) seconds.
  - C(ping) needs no authentication, so this works against a server running with auth on.
  - Uses only the Python standard library (it speaks the wire protocol itself), so it runs on any
    host's C(python3) without pymongo. TLS with O(tls_ca_file) (the C(ssl) module), verifying the
    server's certificate and its name or address against O(host).
  - With O(state=closed) it waits the other way round, until nothing accepts connections on
    O(host):O(port) (a connection refused). Each try connects (and with O(tls_ca_file) or
    O(tls_handshake) completes the TLS handshake) and closes again, which also wakes a server that
    sits in C(accept) while it shuts down (SecantusDB 0.7 joins its accept thread for up to 2 s at
    SIGTERM, and a connection lets that thread see the stop at once). Run it in the background
    (C(async) with C(poll=0)) before stopping such a server.
  - Read-only, never reports a change; runs in check mode too.
options:
  host:
    description: Address to connect to.
    type: str
    default: 127.0.0.1
  port:
    description: Port to connect to.
    type: int
    default: 27017
  timeout:
    description: Seconds to wait in total before failing with C(MasterStartError).
    type: float
    default: 30
  interval:
    description: Seconds between attempts.
    type: float
    default: 0.1
  tls_ca_file:
    description: Speak TLS and verify the server against this CA certificate (PEM). Empty, plain TCP.
    type: path
    default: ""
  tls_client_file:
    description: With O(tls_ca_file), present this client certificate and its key (one PEM; mutual TLS).
    type: path
    default: ""
  state:
    description: C(answering) waits until the server answers ping, C(closed) until the port is closed.
    type: str
    choices: [answering, closed]
    default: answering
  tls_handshake:
    description: With O(state=closed), complete a TLS handshake on each try without verifying the
      server (a TLS server that only sees a connection closed logs a failed handshake). Ignored
      with O(tls_ca_file).
    type: bool
    default: false
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
author:
  - pyhoptcluster developers
"""

EXAMPLES = r"""
- name: Wait for the server (fails with MasterStartError after 10 s)
  pyhoptcluster.cluster.mongo_ping:
    host: 127.0.0.1
    port: 27017
    timeout: 10

- name: Poke the server until its port is closed, in the background, while it stops
  pyhoptcluster.cluster.mongo_ping:
    port: 27017
    state: closed
    interval: 0.05
  async: 40
  poll: 0
"""

RETURN = r"""
elapsed:
  description: Seconds until the server answered (O(state=closed), until the port was closed).
  returned: success
  type: float
  sample: 0.43
attempts:
  description: Number of pings sent or connections tried.
  returned: always
  type: int
  sample: 4
"""

import os
import socket
import ssl
import struct
import time

from ansible.module_utils.basic import AnsibleModule

_OP_MSG = 2013
_HEADER = struct.Struct("<iiii")


def _bson_ping() -> bytes:
    """The document ``{ping: 1, $db: "admin"}``."""
    body = b"\x10ping\x00" + struct.pack("<i", 1)
    db = b"admin\x00"
    body += b"\x02$db\x00" + struct.pack("<i", len(db)) + db
    return struct.pack("<i", len(body) + 5) + body + b"\x00"


def _read_exact(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(size)
        if not chunk:
            raise ConnectionError("server closed the connection")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _skip_cstring(doc: bytes, pos: int) -> int:
    return doc.index(b"\x00", pos) + 1


# Value sizes of the BSON types a ping reply can carry (fixed size, or read from a length prefix).
_FIXED = {0x01: 8, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8, 0x12: 8, 0x13: 16, 0x7F: 0, 0xFF: 0}


def _top_level(doc: bytes) -> dict:
    """Decode the top-level scalar fields of a BSON document (nested ones are skipped)."""
    out = {}
    pos, end = 4, struct.unpack_from("<i", doc)[0] - 1
    while pos < end:
        kind = doc[pos]
        name_end = doc.index(b"\x00", pos + 1)
        name = doc[pos + 1 : name_end].decode("utf-8", "replace")
        pos = name_end + 1
        if kind == 0x01:
            out[name] = struct.unpack_from("<d", doc, pos)[0]
        elif kind == 0x08:
            out[name] = doc[pos] != 0
        elif kind == 0x10:
            out[name] = struct.unpack_from("<i", doc, pos)[0]
        elif kind == 0x12:
            out[name] = struct.unpack_from("<q", doc, pos)[0]
        elif kind == 0x02:
            size = struct.unpack_from("<i", doc, pos)[0]
            out[name] = doc[pos + 4 : pos + 3 + size].decode("utf-8", "replace")
        if kind in _FIXED:
            pos += _FIXED[kind]
        elif kind in (0x02, 0x0D, 0x0E):
            pos += 4 + struct.unpack_from("<i", doc, pos)[0]
        elif kind in (0x03, 0x04, 0x0F):
            pos += struct.unpack_from("<i", doc, pos)[0]
        elif kind == 0x05:
            pos += 5 + struct.unpack_from("<i", doc, pos)[0]
        elif kind == 0x0B:
            pos = _skip_cstring(doc, _skip_cstring(doc, pos))
        elif kind == 0x0C:
            pos += 4 + struct.unpack_from("<i", doc, pos)[0] + 12
        else:
            break  # unknown type: stop, what we have is enough to judge "ok"
    return out


def ping_once(host: str, port: int, timeout: float, tls_ca_file: str = "", tls_client_file: str = "") -> dict:
    """Send one ping and return the reply's top-level fields (over TLS when a CA is given, presenting
    the client certificate in ``tls_client_file`` when one is given)."""
    with socket.create_connection((host, port), timeout=timeout) as raw:
        sock = raw
        if tls_ca_file:
            context = ssl.create_default_context(cafile=tls_ca_file)
            if tls_client_file:
                context.load_cert_chain(tls_client_file)
            sock = context.wrap_socket(raw, server_hostname=host)
        request_id = int.from_bytes(os.urandom(3), "little")
        payload = struct.pack("<I", 0) + b"\x00" + _bson_ping()
        sock.sendall(_HEADER.pack(_HEADER.size + len(payload), request_id, 0, _OP_MSG) + payload)
        length, _rid, response_to, opcode = _HEADER.unpack(_read_exact(sock, _HEADER.size))
        if not 21 <= length <= 48_000_000:
            raise ValueError(f"implausible reply length {length}; is this a MongoDB server?")
        rest = _read_exact(sock, length - _HEADER.size)
        if opcode != _OP_MSG or response_to != request_id:
            raise ValueError(f"unexpected reply (opcode {opcode}); is this a MongoDB server?")
        if rest[4] != 0:
            raise ValueError("reply without a body section")
        return _top_level(rest[5:])


def knock(host: str, port: int, timeout: float, tls_ca_file: str = "", tls_handshake: bool = False) -> None:
    """Connect (and complete a TLS handshake when asked: verified against ``tls_ca_file``, else not
    verified) and close again. Raises ConnectionRefusedError when nothing listens."""
    with socket.create_connection((host, port), timeout=timeout) as raw:
        if tls_ca_file or tls_handshake:
            context = ssl.create_default_context(cafile=tls_ca_file or None)
            if not tls_ca_file:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            context.wrap_socket(raw, server_hostname=host).close()


def wait_closed(module: AnsibleModule) -> None:
    """state=closed: try until a connection is refused (each try wakes a server blocked in accept())."""
    p = module.params
    host, port, timeout, interval = p["host"], p["port"], p["timeout"], max(p["interval"], 0.01)
    start = time.monotonic()
    deadline, attempts = start + timeout, 0
    while True:
        attempts += 1
        try:
            knock(
                host,
                port,
                max(min(deadline - time.monotonic(), 2.0), interval),
                p["tls_ca_file"],
                p["tls_handshake"],
            )
        except ConnectionRefusedError:
            module.exit_json(changed=False, elapsed=round(time.monotonic() - start, 3), attempts=attempts)
        except (OSError, ValueError):
            pass  # it accepted and dropped us, or timed out: still there
        now = time.monotonic()
        if now >= deadline:
            break
        time.sleep(min(interval, deadline - now))
    module.fail_json(
        msg=f"the port {host}:{port} still accepts connections after {timeout:g} s", attempts=attempts
    )


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "host": {"type": "str", "default": "127.0.0.1"},
            "port": {"type": "int", "default": 27017},
            "timeout": {"type": "float", "default": 30.0},
            "interval": {"type": "float", "default": 0.1},
            "tls_ca_file": {"type": "path", "default": ""},
            "tls_client_file": {"type": "path", "default": ""},
            "state": {"type": "str", "default": "answering", "choices": ["answering", "closed"]},
            "tls_handshake": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    if module.params["state"] == "closed":
        wait_closed(module)
    host, port = module.params["host"], module.params["port"]
    timeout, interval = module.params["timeout"], max(module.params["interval"], 0.01)
    start = time.monotonic()
    deadline = start + timeout
    attempts = 0
    last_error = "no attempt made"
    while True:
        attempts += 1
        attempt_start = time.monotonic()
        try:
            reply = ping_once(
                host,
                port,
                max(min(deadline - attempt_start, 5.0), interval),
                module.params["tls_ca_file"],
                module.params["tls_client_file"],
            )
            if reply.get("ok") in (1, 1.0, True):
                module.exit_json(changed=False, elapsed=round(time.monotonic() - start, 3), attempts=attempts)
            last_error = f"ping answered {reply.get('errmsg') or reply}"
        except ConnectionRefusedError:
            last_error = "connection refused"
        except (OSError, ValueError, struct.error) as exc:
            last_error = str(exc) or type(exc).__name__
        now = time.monotonic()
        if now >= deadline:
            break
        time.sleep(min(interval, deadline - now))
    module.fail_json(
        msg=f"MasterStartError: the server at {host}:{port} did not answer ping within {timeout:g} s "
        f"(last: {last_error})",
        attempts=attempts,
    )


if __name__ == "__main__":
    main()
