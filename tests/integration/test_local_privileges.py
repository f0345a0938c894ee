"""Least privilege on one machine (issue 9): a second local Unix user, created by the test, can read
none of the cluster's secrets (the password file, server.json, a worker's config with the password,
the database files) and cannot reach the supervisord that runs the server and the workers.

The cluster's state is put under a world-traversable directory, so only the modes the roles give
their own directories and files protect it (pytest's own 0700 tmp dirs would hide a regression).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from local_cluster import free_port, make_local_inventory

from pyhoptcluster import HyperoptCluster

pytestmark = pytest.mark.integration


@pytest.fixture
def other_user() -> Iterator[str]:
    name = f"phc-probe-{secrets.token_hex(3)}"
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True
    )
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False)


@pytest.fixture
def open_parent() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="phc-priv-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _as(user: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", user, "--", *argv], capture_output=True, text=True, timeout=30)


def test_a_second_local_user_reads_no_secret_and_cannot_drive_supervisord(
    open_parent: Path, other_user: str
) -> None:
    local = make_local_inventory(
        open_parent,
        hyperopt_mongodb_port=free_port(),
        hyperopt_worker_venv=str(Path.home() / ".local/share/pyhoptcluster/worker-venv"),
    )
    cluster = HyperoptCluster(str(local.path))
    try:
        cluster.start(worker_count=1)
        password = cluster.info.password()
        assert password
        secrets_files = {
            "password file": Path(cluster.info.password_file),
            "server.json": local.state_dir / "server.json",
            "worker config": local.worker_state_dir / "worker.conf",
        }
        for what, path in secrets_files.items():
            assert path.is_file(), what
            assert password in path.read_text() or what == "server.json"  # the file really holds it
            denied = _as(other_user, "cat", str(path))
            assert denied.returncode != 0 and "Permission denied" in denied.stderr, (what, denied)
        # the database files (every trial, the pickled objectives)
        listing = _as(other_user, "ls", str(local.state_dir / "db"))
        assert listing.returncode != 0 and "Permission denied" in listing.stderr, listing
        # supervisord's control socket (start, stop, tail the server and the workers)
        socket = local.supervisor.sock
        assert socket.is_socket()
        ctl = _as(
            other_user,
            "python3",
            "-c",
            f"import socket; s = socket.socket(socket.AF_UNIX); s.connect({str(socket)!r})",
        )
        assert ctl.returncode != 0 and "Permission denied" in ctl.stderr, ctl
        # and the password is in no process's command line
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            assert password.encode() not in cmdline, pid
    finally:
        cluster.cleanup()
        local.kill_leftovers()
