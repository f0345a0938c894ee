"""The URL options the compatibility layer hands to MongoClient (TLS, timeouts), and the URLs a TLS
cluster publishes (ClusterInfo)."""

from __future__ import annotations

import pytest

from pyhoptcluster.compat.mongourl import client_options, connection_from_string, parse_url
from pyhoptcluster.control.state import ClusterInfo

URL = "mongo://u:p@db.example:27017/hyperopt/jobs"


def test_tls_options_are_typed_and_parse_url_still_reads_the_path() -> None:
    url = f"{URL}?tls=true&tlsCAFile=/etc/ca%20dir/ca.pem&tlsAllowInvalidHostnames=false&authSource=admin"
    assert client_options(url) == {
        "tls": True,
        "tlsCAFile": "/etc/ca dir/ca.pem",
        "tlsAllowInvalidHostnames": False,
    }
    assert parse_url(url)[3:] == ("db.example", 27017, "hyperopt", "jobs", "admin")


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("tls=yes", "must be true or false"),
        ("tlsCaFile=/ca.pem", "unknown option 'tlsCaFile'"),
        ("tlsCAFile=", "needs a file path"),
        ("serverSelectionTimeoutMS=soon", "whole number"),
    ],
)
def test_a_wrong_option_is_a_value_error_never_a_plaintext_connection(query: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        client_options(f"{URL}?{query}")


def test_no_query_means_no_options() -> None:
    assert client_options(URL) == {}


def _info(**kw) -> ClusterInfo:
    base = dict(
        server_host="10.0.0.5",
        server_port=27017,
        dbname="hyperopt",
        username="u",
        password_file=None,
        auth=False,
        service_manager="systemd",
    )
    return ClusterInfo(**{**base, **kw})


def test_a_tls_cluster_publishes_urls_with_its_ca() -> None:
    info = _info(tls=True, ca_file="/home/me/.local/share/pyhoptcluster/tls/ca.pem")
    url = info.mongo_url(collection="jobs")
    assert (
        url
        == "mongo://10.0.0.5:27017/hyperopt/jobs?tls=true&tlsCAFile=/home/me/.local/share/pyhoptcluster/tls/ca.pem"
    )
    assert client_options(url) == {"tls": True, "tlsCAFile": "/home/me/.local/share/pyhoptcluster/tls/ca.pem"}
    assert info.pymongo_uri() == (
        "mongodb://10.0.0.5:27017/hyperopt?directConnection=true&tls=true"
        "&tlsCAFile=/home/me/.local/share/pyhoptcluster/tls/ca.pem"
    )
    assert _info().mongo_url(collection="jobs") == "mongo://10.0.0.5:27017/hyperopt/jobs"
    assert _info().pymongo_uri() == "mongodb://10.0.0.5:27017/hyperopt?directConnection=true"


def test_retryable_writes_are_off_unless_the_url_turns_them_on() -> None:
    """The driver and the workers retry themselves; SecantusDB would keep a record of every retryable
    write and scan them all on each write (mongourl.connection_with_tunnel)."""
    for query, expected in (("", False), ("?retryWrites=true", True), ("?retryWrites=false", False)):
        client, _tunnel, _db, _coll = connection_from_string(f"mongo://127.0.0.1:9/hyperopt/jobs{query}")
        try:  # no user: pymongo connects lazily, so no server is needed to read the client's options
            assert client.options.retry_writes is expected, query
        finally:
            client.close()
