"""What the playbooks publish, as one typed object.

The last play of ``playbooks/site.yml`` publishes a single ``set_stats`` key, ``hyperopt_cluster``.
This module is the only place that names its fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pyhoptcluster.errors import PlaybookError

STATS_KEY = "hyperopt_cluster"
JOBS_COLLECTION = "jobs"


@dataclass(frozen=True)
class ClusterInfo:
    """The running cluster as the playbooks reported it."""

    server_host: str
    server_port: int
    dbname: str
    username: str | None
    password_file: str | None
    auth: bool
    service_manager: str
    # TLS: clients verify the server against ca_file (a path on the control node)
    tls: bool = False
    ca_file: str | None = None
    # mutual TLS: the client certificate with its key that clients present (a path on the control node)
    client_file: str | None = None
    workers: dict[str, list[int]] = field(default_factory=dict)
    # host -> the worker venv's runtime report (pyhoptcluster.control.check), for hosts whose runtime this run
    # installed; {} on a warm run
    worker_checks: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_stats(cls, stats: Mapping[str, Any]) -> ClusterInfo:
        """Build from the ``artifact_data`` of the ``playbook_on_stats`` event."""
        data = stats.get(STATS_KEY)
        if not isinstance(data, Mapping):
            raise PlaybookError(
                f"the playbook published no '{STATS_KEY}' result; was the publish play skipped "
                "(e.g. by --tags/--limit)? Re-run without them."
            )
        try:
            workers = {str(h): sorted(int(i) for i in ids) for h, ids in (data.get("workers") or {}).items()}
            return cls(
                server_host=str(data["server_host"]),
                server_port=int(data["server_port"]),
                dbname=str(data["dbname"]),
                username=data.get("username") or None,
                password_file=data.get("password_file") or None,
                auth=bool(data.get("auth", True)),
                service_manager=str(data.get("service_manager", "")),
                tls=bool(data.get("tls", False)),
                ca_file=data.get("ca_file") or None,
                client_file=data.get("client_file") or None,
                workers=workers,
                worker_checks=dict(data.get("worker_checks") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PlaybookError(f"the published '{STATS_KEY}' result is malformed: {exc!r}") from exc

    @property
    def worker_count(self) -> int:
        return sum(len(ids) for ids in self.workers.values())

    def password(self) -> str | None:
        """The experiment user's password, read from the 0600 file on the control node."""
        if not self.auth or not self.password_file:
            return None
        try:
            return Path(self.password_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise PermissionError(
                f"cannot read the cluster password file {self.password_file}: {exc.strerror}; "
                "run as the user who started the cluster"
            ) from exc

    def mongo_url(self, with_password: bool = True, collection: str | None = None) -> str:
        """``mongo://user:pw@host:port/dbname[/collection]``, the format hyperopt's MongoTrials parses.

        With ``with_password=False`` the password is replaced by ``***`` (for printing).
        """
        host = f"[{self.server_host}]" if ":" in self.server_host else self.server_host
        userinfo = ""
        if self.auth and self.username:
            secret = self.password() if with_password else "***"
            userinfo = quote(self.username, safe="")
            if secret:
                userinfo += ":" + (quote(secret, safe="") if with_password else secret)
            userinfo += "@"
        url = f"mongo://{userinfo}{host}:{self.server_port}/{self.dbname}"
        url = f"{url}/{collection}" if collection else url
        tls = self.tls_query()
        url = f"{url}?{tls}" if tls else url
        if with_password and userinfo and self.password_file:
            # a driver given this URL re-reads the password there after a rotation (imported here:
            # the compatibility layer loads hyperopt, which the control side's other paths need not)
            from pyhoptcluster.compat import credentials

            credentials.remember(url, self.password_file)
        return url

    def tls_options(self) -> dict[str, Any]:
        """``MongoClient``'s TLS options for this server ({} when it speaks no TLS)."""
        if not self.tls:
            return {}
        options: dict[str, Any] = {"tls": True}
        if self.ca_file:
            options["tlsCAFile"] = self.ca_file
        if self.client_file:
            options["tlsCertificateKeyFile"] = self.client_file
        return options

    def tls_query(self) -> str:
        """:meth:`tls_options` as URL options (``tls=true&tlsCAFile=…``, '' without TLS), which the
        compatibility layer hands back to ``MongoClient`` (pyhoptcluster.compat.mongourl.client_options)."""
        return "&".join(
            f"{k}={'true' if v is True else quote(str(v), safe='/')}" for k, v in self.tls_options().items()
        )

    def pymongo_uri(self) -> str:
        """``mongodb://…/dbname?authSource=dbname`` for ``pymongo.MongoClient`` (direct access)."""
        base = self.mongo_url().removeprefix("mongo://").split("?", 1)[0]
        options = ["directConnection=true"]
        if self.auth and self.username:
            options.append(f"authSource={self.dbname}")
        if self.tls:
            options.append(self.tls_query())
        return f"mongodb://{base}?{'&'.join(options)}"
