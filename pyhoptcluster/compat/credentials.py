"""The fmin driver keeps going when the experiment password is rotated (issue 9).

The URL handed to ``MongoTrials`` carries the password, and pymongo authenticates every new
connection with what the client was built with. After ``pyhoptcluster rotate-password`` the server
restarts with the new password, pymongo reconnects with the old one and gets AuthenticationFailed.

The control side says where a URL's password comes from (:func:`remember`: ``ClusterInfo.mongo_url()``
does it for every URL it builds). The driver's retries (:mod:`.outage`) then call :func:`renew`, which
re-reads that file and, when the password in it is not the one in use, points the ``MongoJobs`` handle
at a new client built from the same URL with the new password (the old client is closed). A URL
nobody remembered (typed by hand) fails as before, with a message that says what to do.

Worker and compatibility side: imports nothing from Ansible or the control side.
"""

from __future__ import annotations

import logging
import threading
import urllib.parse
from pathlib import Path
from typing import Any

import gridfs
import pymongo.errors

from pyhoptcluster.compat.mongourl import HANDLE_GFS_ATTR, HANDLE_URL_ATTR, mask_url

log = logging.getLogger("pyhoptcluster.compat.driver")

AUTH_FAILED = 18  # MongoDB's AuthenticationFailed

_sources: dict[str, str] = {}  # the URL with its password masked -> the file that holds the password
_lock = threading.Lock()


def remember(url: str, password_file: str) -> None:
    """``url``'s password is (the stripped content of) ``password_file``; a rotation rewrites it."""
    with _lock:
        _sources[mask_url(url)] = password_file


def password_file(url: str) -> str | None:
    """The file :func:`remember` recorded for ``url`` (any password in it), or None."""
    with _lock:
        return _sources.get(mask_url(url))


def is_auth_error(exc: BaseException) -> bool:
    """The server refused the credentials (not: a user without a privilege)."""
    return isinstance(exc, pymongo.errors.OperationFailure) and (
        exc.code == AUTH_FAILED or "authentication failed" in str(exc).lower()
    )


def current_url(url: str) -> str | None:
    """``url`` with the password its file holds now; None when no file is known for it or the file
    cannot be read."""
    source = password_file(url)
    if source is None:
        return None
    try:
        password = Path(source).read_text(encoding="utf-8").strip()
    except OSError as exc:
        log.warning("cannot re-read the cluster password file %s (%s)", source, exc.strerror)
        return None
    scheme, _, rest = url.partition("://")
    userinfo, at, hostpart = rest.partition("@")
    if not at:
        return None
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:{urllib.parse.quote(password, safe='')}@{hostpart}"


def tracks(handle: Any) -> bool:
    """Whether ``handle``'s password has a known file (so an auth failure may be a rotation)."""
    url = getattr(handle, HANDLE_URL_ATTR, None)
    return url is not None and password_file(url) is not None


def renew(handle: Any) -> bool:
    """Point ``handle`` (a ``MongoJobs``) at a client with the password its file holds now. False when
    that is the password in use already (or none is known): nothing changed."""
    url = getattr(handle, HANDLE_URL_ATTR, None)
    new = current_url(url) if url is not None else None
    if new is None or new == url:
        return False
    from hyperopt import mongoexp  # the patched connection_from_string (pyhoptcluster.compat.trials)

    conn, tunnel, db, coll = mongoexp.connection_from_string(new)
    old = handle.conn
    handle.conn, handle.tunnel, handle.db, handle.jobs = conn, tunnel, db, coll
    handle.gfs = gridfs.GridFS(db, collection=getattr(handle, HANDLE_GFS_ATTR, "fs"))
    setattr(handle, HANDLE_URL_ATTR, new)
    old.close()
    log.warning("the cluster's password was rotated: reconnected to %s with the new one", mask_url(new))
    return True
