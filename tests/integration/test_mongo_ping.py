"""pyhoptcluster.cluster.mongo_ping's ``state: closed``, run the way the server role's stop runs it:
through `ansible localhost -m`. Its tries connect, so they wake a server loop that sits in accept()
after it was told to stop (as SecantusDB 0.7's accept thread does at SIGTERM), and it returns once the
port is closed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = Path(sys.executable).parent / "ansible"


def mongo_ping(**args) -> subprocess.Popen[str]:
    cmd = [str(ANSIBLE), "localhost", "-c", "local", "-i", "localhost,"]
    cmd += ["-e", f"ansible_python_interpreter={sys.executable}", "-m", "pyhoptcluster.cluster.mongo_ping"]
    cmd += ["-a", json.dumps(args)]
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_CALLBACK_RESULT_FORMAT="json")
    env.update(ANSIBLE_NOCOLOR="1", ANSIBLE_DEPRECATION_WARNINGS="0")
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result(proc: subprocess.Popen[str]) -> tuple[int, dict]:
    out, err = proc.communicate(timeout=120)
    start = out.find("=> {")
    assert start >= 0, f"no module result in output:\n{out}\n{err}"
    return proc.returncode, json.loads(out[start + 3 :])


class AcceptLoop:
    """A listener whose thread leaves its accept() loop only when a connection comes after stop()."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stop_asked = threading.Event()
        self.accepted = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop_asked.is_set():
            conn, _ = self.sock.accept()  # blocks: nothing but a connection wakes it
            self.accepted += 1
            conn.close()
        self.sock.close()


def test_state_closed_wakes_a_loop_blocked_in_accept_and_returns_when_the_port_closes() -> None:
    loop = AcceptLoop()
    knock = mongo_ping(port=loop.port, state="closed", interval=0.05, timeout=60)
    loop.stop_asked.set()  # what SIGTERM does to SecantusDB: its accept thread still waits
    rc, res = result(knock)
    assert rc == 0, res
    assert res["changed"] is False and res["attempts"] >= 2
    loop.thread.join(timeout=5)
    assert not loop.thread.is_alive() and loop.accepted >= 1
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", loop.port), timeout=2)


def test_state_closed_fails_while_the_port_stays_open() -> None:
    loop = AcceptLoop()  # never asked to stop
    try:
        rc, res = result(mongo_ping(port=loop.port, state="closed", interval=0.1, timeout=1))
        assert rc != 0
        assert f"127.0.0.1:{loop.port} still accepts connections after 1 s" in res["msg"]
        assert loop.accepted >= 2
    finally:
        loop.stop_asked.set()
        socket.create_connection(("127.0.0.1", loop.port)).close()
        loop.thread.join(timeout=5)
