"""No unauthenticated moment (issue 9): while a fresh server is brought up, and again when a new
database or user makes the role provision the user, a hostile local poller hammers the server's
loopback port with unauthenticated writes and createUser of a root user. None may succeed.

The old bootstrap ran the server without auth for ~4 s: a poller like this one got 54 writes in and
created a root user that kept working after auth was on. Now SecantusDB's user is written into the
stopped server's data directory (roles/hyperopt_mongodb/files/secantus_user.py): nothing listens
before the server that demands auth.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pymongo
import pytest
from local_cluster import free_port, make_local_inventory
from pymongo.errors import OperationFailure, PyMongoError

from pyhoptcluster import HyperoptCluster

pytestmark = pytest.mark.integration

INTRUDER = "intruder"


@dataclass
class Poller:
    """Unauthenticated clients on 127.0.0.1:port, as fast as pymongo lets them, until stopped."""

    port: int
    outcomes: Counter = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        client = pymongo.MongoClient(
            "127.0.0.1",
            self.port,
            directConnection=True,
            serverSelectionTimeoutMS=100,
            connectTimeoutMS=100,
            heartbeatFrequencyMS=500,
        )
        try:
            while not self.stop.is_set():
                for attempt in ("write", "create_user"):
                    try:
                        if attempt == "write":
                            client.probe.loot.insert_one({"from": "poller"})
                        else:
                            client.admin.command("createUser", INTRUDER, pwd="pw", roles=["root"])
                        self.outcomes[f"{attempt} succeeded"] += 1
                    except OperationFailure as exc:
                        # the server answered and refused: it demands auth
                        self.outcomes["refused" if exc.code in (13, 18) else f"error {exc.code}"] += 1
                    except PyMongoError:
                        self.outcomes["nothing answered"] += 1
        finally:
            client.close()


@pytest.fixture
def poller_on() -> Iterator:
    started: list[tuple[Poller, threading.Thread]] = []

    def start(port: int) -> Poller:
        poller = Poller(port)
        thread = threading.Thread(target=poller.run, daemon=True)
        thread.start()
        started.append((poller, thread))
        return poller

    yield start
    for poller, thread in started:
        poller.stop.set()
        thread.join(10)


def test_a_local_poller_never_gets_an_unauthenticated_write_or_user_in(tmp_path: Path, poller_on) -> None:
    port = free_port()
    local = make_local_inventory(tmp_path, hyperopt_mongodb_port=port)
    poller = poller_on(port)
    cluster = HyperoptCluster(str(local.path))
    try:
        cluster.start_master()  # a fresh state dir: the first user is provisioned
        # a new database: the role provisions its user again (the marker no longer matches)
        again = HyperoptCluster(str(local.path), dbname="other_db")
        again.start_master()
        poller.stop.set()
        # drain the poller's last round
        threading.Event().wait(0.5)
        outcomes = dict(poller.outcomes)
        assert outcomes.get("write succeeded", 0) == 0, outcomes
        assert outcomes.get("create_user succeeded", 0) == 0, outcomes
        # the poller did reach the server once it was up: every one of those attempts was refused
        assert outcomes.get("refused", 0) > 0, outcomes
        assert not [k for k in outcomes if k.startswith("error")], outcomes

        # no intruder account exists, and the experiment user has only readWrite on its own database
        info = again.info
        user = pymongo.MongoClient(
            "127.0.0.1",
            port,
            directConnection=True,
            username=info.username,
            password=info.password(),
            authSource="other_db",
            serverSelectionTimeoutMS=5000,
        )
        roles = user.other_db.command("connectionStatus")["authInfo"]["authenticatedUserRoles"]
        assert roles == [{"role": "readWrite", "db": "other_db"}]
        with pytest.raises(OperationFailure):
            user.probe.loot.insert_one({"from": "the experiment user"})
        intruder = pymongo.MongoClient(
            "127.0.0.1",
            port,
            directConnection=True,
            username=INTRUDER,
            password="pw",
            authSource="admin",
            serverSelectionTimeoutMS=5000,
        )
        with pytest.raises(OperationFailure):
            intruder.admin.command("ping")
        user.close()
        intruder.close()
    finally:
        poller.stop.set()
        cluster.cleanup()
        local.kill_leftovers()
