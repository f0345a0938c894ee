"""Remember where a running cluster's server is, so a fresh process attaches without a playbook run.

``HyperoptCluster.attach()`` (a restarted notebook, every ``pyhoptcluster status/logs/report``
call) learns the server's address from ``playbooks/info.yml``: one ansible-playbook run, 1.5-2 s
before the first database question. After any run that published the cluster, its connection facts
(never the password: the path of its 0600 file) are kept in ``$XDG_CACHE_HOME/pyhoptcluster/attach``
(0600, in a 0700 directory), one file per inventory and extra vars. A later attach uses the file only
when the server it names answers an authenticated ``ping`` within :data:`CHECK_TIMEOUT_MS` and the
inventory files have not changed since; otherwise it runs info.yml again and rewrites the file.
Control side; needs only pymongo.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pymongo
import pymongo.errors

from pyhoptcluster.control.state import STATS_KEY, ClusterInfo
from pyhoptcluster.errors import PlaybookError

CHECK_TIMEOUT_MS = 1500
FIELDS = (
    "server_host",
    "server_port",
    "dbname",
    "username",
    "password_file",
    "auth",
    "service_manager",
    "tls",
    "ca_file",
    "client_file",
)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pyhoptcluster" / "attach"


def _key(inventory: str | Mapping[str, Any], extravars: Mapping[str, Any]) -> str:
    """One key per inventory (with the mtimes of its files, so an edit invalidates) and extra vars."""
    parts: dict[str, Any] = {"extravars": dict(extravars)}
    if isinstance(inventory, str):
        path = Path(inventory)
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        parts["inventory"] = [[str(p), p.stat().st_mtime_ns] for p in files]
    else:
        parts["inventory"] = inventory
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def remember(inventory: str | Mapping[str, Any], extravars: Mapping[str, Any], info: ClusterInfo) -> None:
    """Keep ``info``'s connection facts for this inventory (best effort: a cache never fails a run)."""
    try:
        directory = cache_dir()
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = directory / f"{_key(inventory, extravars)}.json"
        tmp = target.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({STATS_KEY: {name: getattr(info, name) for name in FIELDS}}, f)
        os.replace(tmp, target)
    except (OSError, TypeError, ValueError):
        pass


def recall(inventory: str | Mapping[str, Any], extravars: Mapping[str, Any]) -> ClusterInfo | None:
    """The remembered facts, if the server they name answers as the experiment user now; else None."""
    try:
        path = cache_dir() / f"{_key(inventory, extravars)}.json"
        info = ClusterInfo.from_stats(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, PlaybookError):  # missing, unreadable or malformed
        return None
    try:
        uri = info.pymongo_uri()
        with pymongo.MongoClient(
            uri, serverSelectionTimeoutMS=CHECK_TIMEOUT_MS, connectTimeoutMS=CHECK_TIMEOUT_MS
        ) as client:
            client[info.dbname].command("ping")
    except (PermissionError, pymongo.errors.PyMongoError, ValueError):
        return None
    return info
