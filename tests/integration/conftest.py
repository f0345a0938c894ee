"""Fixtures that run a real SecantusDB server (a MongoDB-protocol server) for integration tests.

The server binary is ``$PYHOPTCLUSTER_SECANTUSD`` if set, else
``~/.local/share/pyhoptcluster/secantusdb-venv/bin/secantusd-py`` (``scripts/test.sh`` installs it).
A missing binary fails the test (it is never skipped). Every server listens on a free loopback port,
keeps its data in a tmp dir, logs to ``<tmp>/secantusd.log``, runs with ``--standalone`` (pymongo
sees a standalone topology) and is stopped by its PID in teardown (SIGTERM, SIGKILL after 20 s).

Fixtures
--------
``mongo_server`` (module scope) -> :class:`MongoServer` without auth.
    ``.host``, ``.port``, ``.url`` (``mongodb://127.0.0.1:PORT/``, for pymongo),
    ``.trials_url(dbname="hyperopt", collection="jobs")`` (``mongo://…/db/jobs``, for MongoTrials),
    ``.client(**kw)`` (a new ``MongoClient``; close it), ``.pid``, ``.storage_path``, ``.log_path``.
``mongo_server_auth`` (module scope) -> :class:`MongoServer` with ``--auth``.
    A user ``pyhoptcluster`` with ``readWrite`` on db ``hyperopt`` (created in that db, so
    authSource is ``hyperopt``, as hyperopt's URL rule gives for a user not named ``hyperopt``)
    and a random URL-safe password: ``.username``, ``.password``, ``.dbname``, ``.auth_source``;
    ``.url`` and ``.trials_url()`` carry the (percent-encoded) credentials.
``secantusd`` (function scope) -> :class:`SecantusdFactory`, for tests that need their own
    server or to stop/restart one: ``secantusd.start(auth_user=None, auth_password=None,
    dbname="hyperopt", port=None, storage_path=None) -> MongoServer``, ``secantusd.stop(server)``,
    ``secantusd.restart(server) -> MongoServer`` (same port and data). Everything it started is
    stopped at teardown.
``secantusd_binary`` (session scope) -> ``Path`` of the server executable.
``testbed_hosts`` (session scope) -> ``TestbedInfo`` of 3 fresh systemd-nspawn hosts (tests/hosts), torn
    down at the end of the session. Name ``pyint`` and subnet ``10.231.6`` unless
    ``PYHOPTCLUSTER_TESTBED_NAME`` / ``PYHOPTCLUSTER_TESTBED_SUBNET`` say otherwise: apart from Molecule's
    (``mol``, 10.231.2) and the ones test_testbed.py brings up itself, so they can run side by side.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pymongo
import pytest
from worker_procs import Workers

DEFAULT_SECANTUSD = "~/.local/share/pyhoptcluster/secantusdb-venv/bin/secantusd-py"
HOST = "127.0.0.1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0


def find_secantusd() -> Path:
    """The SecantusDB server executable, or fail the test with what to do."""
    path = Path(os.environ.get("PYHOPTCLUSTER_SECANTUSD") or DEFAULT_SECANTUSD).expanduser()
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"SecantusDB server not found at {path}: run scripts/test.sh (it installs it), "
            "or point PYHOPTCLUSTER_SECANTUSD at a secantusd-py executable",
            pytrace=False,
        )
    return path


def free_port(host: str = HOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class MongoServer:
    host: str
    port: int
    storage_path: Path
    log_path: Path
    proc: subprocess.Popen[bytes] = field(repr=False)
    auth: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    dbname: str = "hyperopt"
    standalone: bool = True  # False: a one-node replica set (change streams), SecantusDB's default

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def auth_source(self) -> str | None:
        return self.dbname if self.username else None

    def _userinfo(self) -> str:
        if not self.username:
            return ""
        quote = urllib.parse.quote
        return f"{quote(self.username, safe='')}:{quote(self.password or '', safe='')}@"

    @property
    def url(self) -> str:
        """pymongo URI (with credentials and authSource when the server has a user)."""
        query = f"?authSource={self.auth_source}" if self.username else ""
        return f"mongodb://{self._userinfo()}{self.host}:{self.port}/{query}"

    def trials_url(self, dbname: str | None = None, collection: str = "jobs") -> str:
        """``mongo://[user:pw@]host:port/db/collection``, the URL MongoTrials and workers take."""
        return f"mongo://{self._userinfo()}{self.host}:{self.port}/{dbname or self.dbname}/{collection}"

    def client(self, **kwargs) -> pymongo.MongoClient:
        kwargs.setdefault("serverSelectionTimeoutMS", 10000)
        return pymongo.MongoClient(self.url, **kwargs)

    def alive(self) -> bool:
        return self.proc.poll() is None


def _log_tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _stop(server: MongoServer) -> None:
    """SIGTERM by PID, SIGKILL if it does not exit in time. Safe to call twice."""
    if server.proc.poll() is not None:
        return
    try:
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait(timeout=10)


def _launch(binary: Path, storage: Path, port: int, auth: bool, standalone: bool = True) -> MongoServer:
    storage.mkdir(parents=True, exist_ok=True)
    log_path = storage.parent / f"{storage.name}-secantusd.log"
    argv = [str(binary), "--host", HOST, "--port", str(port), "--storage-path", str(storage)]
    if standalone:
        argv.append("--standalone")
    if auth:
        argv.append("--auth")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=storage.parent,  # it looks for ./secantusd.toml; keep that away from the repo
            # same process group as pytest: if pytest itself is killed (no teardown), a signal to
            # its group still reaches the server
        )
    server = MongoServer(HOST, port, storage, log_path, proc, auth=auth, standalone=standalone)
    deadline = time.monotonic() + START_TIMEOUT
    probe = pymongo.MongoClient(
        HOST, port, serverSelectionTimeoutMS=250, connectTimeoutMS=250, directConnection=True
    )
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"secantusd exited with {proc.returncode}:\n{_log_tail(log_path)}")
            try:
                probe.admin.command("ping")
                return server
            except pymongo.errors.PyMongoError:
                if time.monotonic() > deadline:
                    _stop(server)
                    raise RuntimeError(
                        f"secantusd did not answer ping within {START_TIMEOUT} s:\n{_log_tail(log_path)}"
                    ) from None
                time.sleep(0.05)
    finally:
        probe.close()


class SecantusdFactory:
    """Starts SecantusDB servers and stops every one of them in :meth:`close`."""

    def __init__(self, binary: Path, tmp: Path) -> None:
        self.binary = binary
        self.tmp = tmp
        self.servers: list[MongoServer] = []
        self._n = 0

    def _start(self, storage: Path, port: int | None, auth: bool, standalone: bool = True) -> MongoServer:
        last: Exception | None = None
        for _ in range(3):  # a free port can be taken between picking and binding it
            try:
                server = _launch(self.binary, storage, port or free_port(), auth, standalone)
            except RuntimeError as exc:
                last = exc
                if port is not None:
                    break
                continue
            self.servers.append(server)
            return server
        raise RuntimeError(f"could not start secantusd: {last}")

    def start(
        self,
        auth_user: str | None = None,
        auth_password: str | None = None,
        dbname: str = "hyperopt",
        port: int | None = None,
        storage_path: Path | None = None,
        standalone: bool = True,
    ) -> MongoServer:
        """A running server; with ``auth_user`` it has that user (readWrite on ``dbname``, created
        in ``dbname``) and runs with ``--auth``; ``standalone=False``: a one-node replica set."""
        self._n += 1
        storage = storage_path or self.tmp / f"db{self._n}"
        server = self._start(storage, port, auth=False, standalone=standalone)
        if auth_user is None:
            return replace(server, dbname=dbname)
        password = auth_password if auth_password is not None else secrets.token_urlsafe(24)
        with pymongo.MongoClient(
            HOST, server.port, serverSelectionTimeoutMS=10000, directConnection=True
        ) as client:
            client[dbname].command(
                "createUser", auth_user, pwd=password, roles=[{"role": "readWrite", "db": dbname}]
            )
        self.stop(server)
        try:
            authed = self._start(storage, server.port, auth=True, standalone=standalone)
        except RuntimeError:  # the port went to someone else meanwhile
            authed = self._start(storage, None, auth=True, standalone=standalone)
        return replace(authed, username=auth_user, password=password, dbname=dbname)

    def stop(self, server: MongoServer) -> None:
        _stop(server)

    def restart(self, server: MongoServer) -> MongoServer:
        """Stop ``server`` and start it again on the same port and data (same credentials)."""
        self.stop(server)
        again = self._start(server.storage_path, server.port, auth=server.auth, standalone=server.standalone)
        return replace(again, username=server.username, password=server.password, dbname=server.dbname)

    def close(self) -> None:
        errors = []
        for server in self.servers:
            try:
                _stop(server)
            except Exception as exc:  # keep stopping the others
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture(scope="session")
def secantusd_binary() -> Path:
    return find_secantusd()


@pytest.fixture
def secantusd(secantusd_binary: Path, tmp_path: Path) -> Iterator[SecantusdFactory]:
    factory = SecantusdFactory(secantusd_binary, tmp_path)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="module")
def mongo_server(secantusd_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoServer]:
    factory = SecantusdFactory(secantusd_binary, tmp_path_factory.mktemp("mongo-server"))
    try:
        yield factory.start()
    finally:
        factory.close()


@pytest.fixture(scope="module")
def mongo_server_auth(
    secantusd_binary: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MongoServer]:
    factory = SecantusdFactory(secantusd_binary, tmp_path_factory.mktemp("mongo-server-auth"))
    try:
        yield factory.start(auth_user="pyhoptcluster", dbname="hyperopt")
    finally:
        factory.close()


# -- the multi-host test bed ------------------------------------------------------------------------


def _load_testbed_fixtures():
    """tests/hosts/fixtures.py by path (tests/hosts is not a package), one module per process."""
    name = "pyhoptcluster_testbed_fixtures"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "hosts" / "fixtures.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


testbed_hosts = _load_testbed_fixtures().make_testbed_fixture(
    n=3,
    name=os.environ.get("PYHOPTCLUSTER_TESTBED_NAME", "pyint"),
    subnet=os.environ.get("PYHOPTCLUSTER_TESTBED_SUBNET", "10.231.6"),
)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    """Starts real pyhoptcluster-worker processes (tests/integration/worker_procs.py); stops them by PID."""
    pool = Workers(tmp_path)
    try:
        yield pool
    finally:
        pool.close()
