"""The driver's password source after a rotation (pyhoptcluster.compat.credentials): which file a URL's
password comes from, the URL rebuilt with what the file holds now, and which errors count as a refused
password."""

from __future__ import annotations

from pathlib import Path

import pymongo.errors

from pyhoptcluster.compat import credentials
from pyhoptcluster.control.state import ClusterInfo


def _info(password_file: Path, tls: bool = False) -> ClusterInfo:
    return ClusterInfo(
        server_host="10.0.0.5",
        server_port=27123,
        dbname="hyperopt",
        username="pyhoptcluster",
        password_file=str(password_file),
        auth=True,
        service_manager="supervisor",
        tls=tls,
        ca_file="/etc/ca.pem" if tls else None,
    )


def test_a_url_of_the_facade_is_rebuilt_with_the_password_its_file_holds_now(tmp_path: Path) -> None:
    pw = tmp_path / "mongodb.password"
    pw.write_text("old/secret\n")
    url = _info(pw, tls=True).mongo_url(collection="jobs")
    assert credentials.password_file(url) == str(pw)
    assert credentials.current_url(url) == url  # nothing rotated yet
    pw.write_text("n3w+pass\n")
    new = credentials.current_url(url)
    assert new == url.replace("old%2Fsecret", "n3w%2Bpass")
    assert new.endswith("/hyperopt/jobs?tls=true&tlsCAFile=/etc/ca.pem")
    # the rebuilt URL is known too (the same file), so a second rotation works as the first
    assert credentials.password_file(new) == str(pw)


def test_a_url_nobody_remembered_has_no_source(tmp_path: Path) -> None:
    url = "mongo://someone:pw@127.0.0.1:1/db/jobs"
    assert credentials.password_file(url) is None
    assert credentials.current_url(url) is None


def test_an_unreadable_password_file_gives_no_url(tmp_path: Path) -> None:
    pw = tmp_path / "gone.password"
    pw.write_text("x\n")
    url = _info(pw).mongo_url(collection="jobs")
    pw.unlink()
    assert credentials.current_url(url) is None


def test_only_a_refused_password_counts_as_an_auth_error() -> None:
    assert credentials.is_auth_error(pymongo.errors.OperationFailure("Authentication failed.", code=18))
    assert not credentials.is_auth_error(pymongo.errors.OperationFailure("not authorized on db", code=13))
    assert not credentials.is_auth_error(pymongo.errors.AutoReconnect("connection closed"))
