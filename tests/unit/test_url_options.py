"""The URL options the compatibility layer hands to MongoClient (TLS, timeouts), and the URLs a TLS
cluster publishes (ClusterInfo)."""

from __future__ import annotations

import pytest

from pyhoptcluster.compat.mongourl import client_options, parse_url
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
