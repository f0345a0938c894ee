"""Hyperopt Mongo URLs and the connections made from them, for pymongo 4.

A hyperopt Mongo URL is ``mongo://[user[:password]@]host[:port]/dbname/collection[?options]``
(``mongo+ssh://`` tunnels through ``ssh``). Options: ``authSource`` (stock's), and TLS, which stock
hyperopt never had: ``tls=true``, ``tlsCAFile=<path>`` (verify the server against that CA),
``tlsCertificateKeyFile=<path>`` (a client certificate, for mutual TLS), ``tlsAllowInvalidHostnames``,
``tlsInsecure``; the timeouts ``serverSelectionTimeoutMS``, ``connectTimeoutMS``,
``socketTimeoutMS``; and ``retryWrites`` (off unless the URL says ``true``: see
:func:`connection_with_tunnel`). They go to ``MongoClient`` (:func:`client_options`).

This module parses and masks such URLs and turns them into ``MongoClient``/``MongoJobs`` objects
the way stock ``hyperopt.mongoexp`` does, but with pymongo-4 authentication:
:mod:`pyhoptcluster.compat.trials` installs :func:`parse_url`, :func:`connection_with_tunnel`,
:func:`connection_from_string`, :func:`number_of_jobs_in_db` and the ``MongoJobs`` constructors
below into ``hyperopt.mongoexp``.

It is imported on both sides and imports nothing from Ansible or the control side.
"""

from __future__ import annotations

import logging
import subprocess
import time
import urllib.parse
from typing import Any

import gridfs
import numpy
import pymongo
from bson import SON
from hyperopt import mongoexp

__all__ = [
    "DEFAULT_PORT",
    "auth_source",
    "client_options",
    "connection_from_string",
    "connection_with_tunnel",
    "mask_url",
    "number_of_jobs_in_db",
    "parse_url",
]

logger = logging.getLogger(mongoexp.__name__)  # log as hyperopt.mongoexp did

DEFAULT_PORT = 27017


# --------------------------------------------------------------------------- URLs


def parse_url(url: str, pwfile: str | None = None) -> tuple:
    """Unpack ``protocol://[user[:pw]@]host[:port]/db/collection[?authSource=...]``.

    Returns ``(protocol, username, password, hostname, port, dbname, collection, authdbname)``
    like stock ``hyperopt.mongoexp.parse_url``, but with user and password percent-decoded and
    port 27017 when the URL names none. As in stock, a user without a password in the URL reads
    the password from ``pwfile`` (``open(pwfile).read()[:-1]``) when one is given.
    """
    protocol = url[: url.find(":")]
    ftp_url = "ftp" + url[url.find(":") :]
    tmp = urllib.parse.urlparse(ftp_url)
    query_params = urllib.parse.parse_qs(tmp.query)
    username = urllib.parse.unquote(tmp.username) if tmp.username is not None else None

    logger.info("PROTOCOL %s", protocol)
    logger.info("USERNAME %s", username)
    logger.info("HOSTNAME %s", tmp.hostname)
    logger.info("PORT %s", tmp.port)
    logger.info("PATH %s", tmp.path)

    authdbname = None
    if query_params.get("authSource"):
        authdbname = query_params["authSource"][-1]
    logger.info("AUTH DB %s", authdbname)

    try:
        _, dbname, collection = tmp.path.split("/")
    except ValueError:
        raise ValueError(
            f"cannot parse the path {tmp.path!r} of a hyperopt Mongo URL: expected /<dbname>/<collection>"
        ) from None
    logger.info("DB %s", dbname)
    logger.info("COLLECTION %s", collection)

    if tmp.password is None:
        if username is not None and pwfile:
            with open(pwfile) as f:
                password = f.read()[:-1]
        else:
            password = None
    else:
        password = urllib.parse.unquote(tmp.password)
    if password is not None:
        logger.info("PASS ***")
    port = int(tmp.port) if tmp.port is not None else DEFAULT_PORT

    return (protocol, username, password, tmp.hostname, port, dbname, collection, authdbname)


# URL query options that go to MongoClient (authSource is parse_url's); no secret ever belongs in a URL
# option (a client key's password would be one), so there is none for it.
_BOOL_OPTIONS = (
    "tls",
    "ssl",
    "tlsAllowInvalidHostnames",
    "tlsAllowInvalidCertificates",
    "tlsInsecure",
    "retryWrites",
)
_PATH_OPTIONS = ("tlsCAFile", "tlsCertificateKeyFile", "tlsCRLFile")
_INT_OPTIONS = ("serverSelectionTimeoutMS", "connectTimeoutMS", "socketTimeoutMS")


def client_options(url: str) -> dict[str, Any]:
    """The ``MongoClient`` options a URL's query names (TLS), typed; ``ValueError`` for an option
    this layer does not know, so a typo never silently means a plaintext connection."""
    query = urllib.parse.urlsplit("ftp" + url[url.find(":") :]).query
    options: dict[str, Any] = {}
    for key, values in urllib.parse.parse_qs(query, keep_blank_values=True).items():
        value = values[-1]
        if key == "authSource":
            continue
        if key in _BOOL_OPTIONS:
            if value.lower() not in ("true", "false"):
                raise ValueError(f"the URL option {key} must be true or false, got {value!r}")
            options[key] = value.lower() == "true"
        elif key in _PATH_OPTIONS:
            if not value:
                raise ValueError(f"the URL option {key} needs a file path")
            options[key] = value
        elif key in _INT_OPTIONS:
            if not value.isdigit():
                raise ValueError(
                    f"the URL option {key} must be a whole number of milliseconds, got {value!r}"
                )
            options[key] = int(value)
        else:
            known = ", ".join(("authSource", *_BOOL_OPTIONS, *_PATH_OPTIONS, *_INT_OPTIONS))
            raise ValueError(f"unknown option {key!r} in a hyperopt Mongo URL (known: {known})")
    return options


def auth_source(user: str | None, dbname: str, auth_dbname: str | None = None) -> str | None:
    """The authentication database hyperopt uses: ``authSource`` from the URL if given, else
    ``admin`` for the user ``hyperopt``, else the URL's database. ``None`` without a user."""
    if not user:
        return None
    if auth_dbname:
        return auth_dbname
    if user == "hyperopt":
        return "admin"
    return dbname


def mask_url(url: str) -> str:
    """``url`` with the password (if any) replaced by ``***``, for log lines and messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc_end = len(rest)
    for ch in "/?#":
        pos = rest.find(ch)
        if pos != -1:
            netloc_end = min(netloc_end, pos)
    netloc, tail = rest[:netloc_end], rest[netloc_end:]
    userinfo, at, hostport = netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{hostport}{tail}"


# --------------------------------------------------------------------------- connections


def connection_with_tunnel(
    dbname,
    host="localhost",
    auth_dbname=None,
    port=27017,
    ssh=False,
    user="hyperopt",
    pw=None,
    **client_kwargs,
):
    """Stock signature and result ``(MongoClient, ssh_tunnel_or_None)``; pymongo-4 authentication.

    Extra keyword arguments go to ``MongoClient`` (e.g. ``serverSelectionTimeoutMS``).
    """
    # directConnection: the one server of the cluster, never a member list it advertises (which may
    # name an address the client cannot reach, e.g. behind an ssh tunnel). retryWrites off: with one
    # server there is no new primary to retry on, the driver and the workers retry themselves and every
    # write of theirs is guarded or idempotent (outage.py, worker/jobrunner.py), and SecantusDB keeps a
    # record of each retryable write and scans (at 10,000, sorts) them all on every write, which cut
    # the dispatch rate from 64 to 23 trials/s over the first 3,000 trials. A URL option wins.
    options: dict[str, Any] = {
        "document_class": SON,
        "w": 1,
        "journal": True,
        "directConnection": True,
        "retryWrites": False,
    }
    options.update(client_kwargs)
    if user:
        if not pw:
            pw = mongoexp.read_pw()
        options.update(username=user, password=pw, authSource=auth_source(user, dbname, auth_dbname))
    ssh_tunnel = None
    if ssh:
        local_port = numpy.random.randint(low=27500, high=28000)
        # -- forward from local to remote machine
        ssh_tunnel = subprocess.Popen(["ssh", "-NTf", "-L", f"{local_port}:127.0.0.1:{port}", host])
        # -- give the subprocess time to set up
        time.sleep(0.5)
        connection = pymongo.MongoClient("127.0.0.1", int(local_port), **options)
    else:
        connection = pymongo.MongoClient(host, port, **options)
    if user:
        # pymongo 4 authenticates lazily; stock's authenticate() failed right here on bad credentials.
        try:
            connection[dbname].command("ping")
        except BaseException:
            connection.close()
            raise
    return connection, ssh_tunnel


def connection_from_string(s, **client_kwargs):
    """Stock result ``(client, tunnel, database, collection)`` for a URL; the URL's TLS options
    (:func:`client_options`) and extra keyword arguments (which win) go to ``MongoClient``."""
    client_kwargs = {**client_options(s), **client_kwargs}
    protocol, user, pw, host, port, db, collection, authdb = mongoexp.parse_url(s)
    if protocol == "mongo":
        ssh = False
    elif protocol in ("mongo+ssh", "ssh+mongo"):
        ssh = True
    else:
        raise ValueError("unrecognized protocol for MongoJobs", protocol)
    connection, tunnel = mongoexp.connection_with_tunnel(
        dbname=db, ssh=ssh, user=user, pw=pw, host=host, port=port, auth_dbname=authdb, **client_kwargs
    )
    return connection, tunnel, connection[db], connection[db][collection]


def number_of_jobs_in_db(options):
    """Stock ``number_of_jobs_in_db`` (``hyperopt-mongo-worker --max-jobs-in-db``) with pymongo 4."""
    mj = mongoexp.MongoJobs.new_from_connection_str(mongoexp.as_mongo_str(options.mongo) + "/jobs")
    return mj.jobs.count_documents({})


# --------------------------------------------------------------------------- MongoJobs constructors

# the URL a handle was built from and its GridFS collection: what credentials.renew() rebuilds it with
HANDLE_URL_ATTR = "_pyhoptcluster_url"
HANDLE_GFS_ATTR = "_pyhoptcluster_gfs_coll"


@classmethod
def jobs_alloc(
    cls,
    dbname,
    host="localhost",
    auth_dbname="admin",
    port=27017,
    jobs_coll="jobs",
    gfs_coll="fs",
    ssh=False,
    user=None,
    pw=None,
    config_name="spec",
):
    """``MongoJobs.alloc``: stock's, passing the ``config_name`` the constructor requires."""
    connection, tunnel = mongoexp.connection_with_tunnel(dbname, host, auth_dbname, port, ssh, user, pw)
    db = connection[dbname]
    gfs = gridfs.GridFS(db, collection=gfs_coll)
    return cls(db, db[jobs_coll], gfs, connection, tunnel, config_name)


@classmethod
def jobs_new_from_connection_str(cls, conn_str, gfs_coll="fs", config_name="spec", **client_kwargs):
    """``MongoJobs.new_from_connection_str``; extra keyword arguments go to ``MongoClient``."""
    connection, tunnel, db, coll = mongoexp.connection_from_string(conn_str, **client_kwargs)
    gfs = gridfs.GridFS(db, collection=gfs_coll)
    handle = cls(db, coll, gfs, connection, tunnel, config_name)
    if not client_kwargs:  # what credentials.renew() rebuilds after a password rotation
        setattr(handle, HANDLE_URL_ATTR, conn_str)
        setattr(handle, HANDLE_GFS_ATTR, gfs_coll)
    return handle
