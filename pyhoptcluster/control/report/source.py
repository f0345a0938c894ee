"""Where the experiments are read from: a server of a cluster, or a ``MongoTrials`` URL.

A :class:`Source` holds one ``MongoClient`` (the password goes into it and nowhere else: it is not
kept on the object, and ``shown`` — what messages, the report and the dashboard print — has none).
It reads job documents, the ``workers`` collection and the experiment's pickled search space;
:mod:`.reduce` turns those into figures' data. Control side only.
"""

from __future__ import annotations

import datetime
import io
import logging
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pymongo
import pymongo.errors

from pyhoptcluster.compat.mongourl import auth_source, client_options, parse_url
from pyhoptcluster.control.report.reduce import ParamInfo
from pyhoptcluster.errors import ClusterNotStartedError
from pyhoptcluster.worker.liveness import WORKERS_COLLECTION

log = logging.getLogger("pyhoptcluster.control.report")

# What the report needs of a job document (the rest, e.g. the spec and the result's extras, is not read).
JOB_FIELDS = [
    "tid",
    "state",
    "exp_key",
    "result.status",
    "result.loss",
    "result.failure",
    "misc.vals",
    "owner",
    "book_time",
    "refresh_time",
    "attempts",
    "reclaims",
    "error",
]
DOMAIN_ATTACHMENT = "FMinIter_Domain"


class ServerNotRunningError(ClusterNotStartedError):
    """The experiments' server does not answer (the cluster is stopped, or the address is wrong)."""


@dataclass(frozen=True)
class ExperimentInfo:
    exp_key: str
    trials: int
    counts: dict[str, int]
    last_change: datetime.datetime | None


class Source:
    """A connection to the database that holds the experiments' ``jobs`` collection."""

    def __init__(
        self,
        host: str,
        port: int,
        dbname: str,
        collection: str = "jobs",
        username: str | None = None,
        password: str | None = None,
        auth_db: str | None = None,
        timeout: float = 5.0,
        hint: str = "",
        options: dict[str, Any] | None = None,
    ) -> None:
        """``options``: more ``MongoClient`` options (TLS, from the URL or the cluster)."""
        self.dbname = dbname
        self.collection = collection
        where = f"[{host}]" if ":" in host else host
        user = f"{username}@" if username else ""
        self.shown = f"mongo://{user}{where}:{port}/{dbname}/{collection}"
        self.address = f"{where}:{port}"
        self.hint = hint  # what to do when the server does not answer
        kwargs: dict[str, Any] = {"serverSelectionTimeoutMS": int(timeout * 1000), "connectTimeoutMS": 3000}
        if username:
            kwargs.update(username=username, password=password or "", authSource=auth_db or dbname)
        kwargs.update(options or {})
        self._client: pymongo.MongoClient = pymongo.MongoClient(host, port, **kwargs)

    # -- construction --------------------------------------------------------------------------------
    @classmethod
    def from_url(cls, url: str, password_file: str | None = None, hint: str = "") -> Source:
        """``mongo://[user[:pw]@]host[:port]/db/jobs``; a user without a password in the URL reads it
        from ``password_file`` (a password on a command line is visible in ``ps``: prefer the file)."""
        protocol, user, pw, host, port, db, coll, authdb = parse_url(url)
        if protocol != "mongo":
            raise ValueError(f"only mongo:// URLs are supported here, not {protocol}://")
        if user and pw is None and password_file:
            # (not stock parse_url's pwfile, which drops the last character even without a newline)
            with open(password_file, encoding="utf-8") as f:
                pw = f.read().rstrip("\r\n")
        return cls(
            host,
            port,
            db,
            coll,
            user,
            pw,
            auth_source(user, db, authdb),
            hint=hint,
            options=client_options(url),
        )

    @classmethod
    def from_info(cls, info: Any, hint: str = "") -> Source:
        """From a :class:`pyhoptcluster.control.state.ClusterInfo` (password read from its 0600 file)."""
        user = info.username if info.auth else None
        password = info.password() if user else None
        return cls(
            info.server_host,
            info.server_port,
            info.dbname,
            "jobs",
            user,
            password,
            hint=hint,
            options=info.tls_options(),
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------------------
    @property
    def db(self) -> Any:
        return self._client[self.dbname]

    @property
    def jobs(self) -> Any:
        return self.db[self.collection]

    def check(self) -> None:
        """Ping the server; :class:`ServerNotRunningError` saying what to do when it does not answer."""
        try:
            self.db.command("ping")
        except pymongo.errors.OperationFailure as exc:
            raise PermissionError(f"the server at {self.shown} refused the login: {exc}") from exc
        except pymongo.errors.PyMongoError as exc:
            msg = f"no server answers at {self.address} ({type(exc).__name__})"
            raise ServerNotRunningError(f"{msg}; {self.hint}" if self.hint else msg) from exc

    def now(self) -> datetime.datetime:
        """The server's clock (naive UTC), to end the bars of running trials."""
        try:
            value = self._client.admin.command("hello").get("localTime")
        except pymongo.errors.PyMongoError:
            value = None
        if isinstance(value, datetime.datetime):
            return value.replace(tzinfo=None)
        return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)

    def experiments(self) -> list[ExperimentInfo]:
        """Every exp_key in the jobs collection, with its trial counts by state, newest first."""
        from pyhoptcluster.control.report.reduce import STATE_NAMES

        rows: dict[Any, dict[str, Any]] = {}
        for doc in self.jobs.find({}, projection=["exp_key", "state", "refresh_time", "book_time"]):
            key = doc.get("exp_key")
            row = rows.setdefault(key, {"counts": {}, "last": None, "n": 0})
            row["n"] += 1
            name = STATE_NAMES.get(doc.get("state"), "new")
            row["counts"][name] = row["counts"].get(name, 0) + 1
            for field in ("refresh_time", "book_time"):
                t = doc.get(field)
                if isinstance(t, datetime.datetime):
                    t = t.replace(tzinfo=None)
                    if row["last"] is None or t > row["last"]:
                        row["last"] = t
        out = [
            ExperimentInfo(str(k) if k is not None else "", r["n"], r["counts"], r["last"])
            for k, r in rows.items()
        ]
        out.sort(key=lambda e: (e.last_change or datetime.datetime.min, e.exp_key), reverse=True)
        return out

    def job_docs(self, exp_key: str) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"exp_key": exp_key if exp_key else None}
        return list(self.jobs.find(query, projection=JOB_FIELDS))

    def workers(self) -> list[dict[str, Any]]:
        """The worker records (host, instance, pid, state, tid, jobs_done, heartbeat, ...)."""
        return list(self.db[WORKERS_COLLECTION].find({}))

    def space(self, exp_key: str) -> dict[str, ParamInfo]:
        """The experiment's hyperparameters as its pickled ``Domain`` describes them (hp.choice
        options, distributions). ``{}`` when it cannot be read: hp.choice then shows indices.

        Unpickling runs code from the experiment, as the workers do: only point this at your own
        experiments' database. Names that cannot be imported here (the objective's module, say) are
        replaced by a stand-in, so the space is read without the objective."""
        import gridfs

        query: dict[str, Any] = {"filename": DOMAIN_ATTACHMENT}
        if exp_key:
            query["exp_key"] = exp_key
        try:
            grid_out = gridfs.GridFS(self.db).find_one(query, sort=[("uploadDate", -1)])
            if grid_out is None:
                return {}
            blob = grid_out.read()
        except pymongo.errors.PyMongoError as exc:
            log.info("search space of %r not readable: %s", exp_key, exc)
            return {}
        try:
            domain = _TolerantUnpickler(io.BytesIO(blob)).load()
        except Exception as exc:  # a corrupt or foreign attachment
            log.info("search space of %r not unpickled (%s); hp.choice shows indices", exp_key, exc)
            return {}
        return space_of(domain)


class _Missing:
    """Stands in for a class or function the pickle names but this process cannot import."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


class _TolerantUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return _Missing


def space_of(domain: Any) -> dict[str, ParamInfo]:
    """label -> :class:`ParamInfo` from a hyperopt ``Domain`` (or anything with ``.expr``/``.params``)."""
    from hyperopt.pyll import dfs

    choices: dict[str, tuple[str, ...]] = {}
    for node in dfs(domain.expr):
        if node.name != "switch" or not node.pos_args or node.pos_args[0].name != "hyperopt_param":
            continue
        label = str(node.pos_args[0].pos_args[0].obj)
        choices[label] = tuple(
            repr(opt.obj)
            if opt.name == "literal" and not isinstance(opt.obj, str)
            else (str(opt.obj) if opt.name == "literal" else f"option {i}")
            for i, opt in enumerate(node.pos_args[1:])
        )
    params: Mapping[str, Any] = getattr(domain, "params", {}) or {}
    return {
        str(label): ParamInfo(str(label), str(getattr(node, "name", "")), choices.get(str(label)))
        for label, node in params.items()
    }
