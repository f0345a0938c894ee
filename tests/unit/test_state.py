"""ClusterInfo: parsing the published result and building the URLs MongoTrials needs."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from hyperopt.mongoexp import parse_url

from pyhoptcluster.control.state import ClusterInfo
from pyhoptcluster.errors import PlaybookError


def _stats(tmp_path: Path, password: str = "s3cretPW", **over: object) -> dict:
    pw = tmp_path / "mongodb.password"
    pw.write_text(password + "\n")
    pw.chmod(stat.S_IRUSR | stat.S_IWUSR)
    data = {
        "server_host": "10.231.0.1",
        "server_port": 27018,
        "dbname": "hyperopt",
        "username": "pyhoptcluster",
        "password_file": str(pw),
        "auth": True,
        "service_manager": "daemon",
        "workers": {"h1": [4, 1], "h2": [2], "h3": []},
    }
    data.update(over)
    return {"hyperopt_cluster": data}


def test_from_stats_reads_every_field_and_sorts_worker_ids(tmp_path: Path) -> None:
    info = ClusterInfo.from_stats(_stats(tmp_path))
    assert info.server_port == 27018
    assert info.workers == {"h1": [1, 4], "h2": [2], "h3": []}
    assert info.worker_count == 3


def test_missing_result_names_the_publish_play() -> None:
    with pytest.raises(PlaybookError, match="publish"):
        ClusterInfo.from_stats({})


def test_malformed_result_is_a_playbook_error(tmp_path: Path) -> None:
    with pytest.raises(PlaybookError, match="malformed"):
        ClusterInfo.from_stats(_stats(tmp_path, server_port="not-a-port"))


def test_trial_url_round_trips_through_hyperopts_parser(tmp_path: Path) -> None:
    info = ClusterInfo.from_stats(_stats(tmp_path))
    url = info.mongo_url(collection="jobs")
    assert url == "mongo://pyhoptcluster:s3cretPW@10.231.0.1:27018/hyperopt/jobs"
    protocol, user, pw, host, port, db, coll, _authdb = parse_url(url)
    assert (protocol, user, pw, host, port, db, coll) == (
        "mongo",
        "pyhoptcluster",
        "s3cretPW",
        "10.231.0.1",
        27018,
        "hyperopt",
        "jobs",
    )


def test_printed_url_masks_the_password(tmp_path: Path) -> None:
    info = ClusterInfo.from_stats(_stats(tmp_path))
    masked = info.mongo_url(with_password=False)
    assert "s3cretPW" not in masked
    assert masked == "mongo://pyhoptcluster:***@10.231.0.1:27018/hyperopt"


def test_special_characters_in_password_are_percent_encoded(tmp_path: Path) -> None:
    info = ClusterInfo.from_stats(_stats(tmp_path, password="p@ss:w/rd"))
    assert "p%40ss%3Aw%2Frd@" in info.mongo_url()


def test_no_auth_gives_plain_url(tmp_path: Path) -> None:
    info = ClusterInfo.from_stats(_stats(tmp_path, auth=False))
    assert info.mongo_url() == "mongo://10.231.0.1:27018/hyperopt"


def test_ipv6_host_is_bracketed(tmp_path: Path) -> None:
    info = ClusterInfo.from_stats(_stats(tmp_path, server_host="::1", auth=False))
    assert info.mongo_url(collection="jobs") == "mongo://[::1]:27018/hyperopt/jobs"


def test_unreadable_password_file_is_a_permission_error(tmp_path: Path) -> None:
    info = ClusterInfo.from_stats(_stats(tmp_path, password_file=str(tmp_path / "missing")))
    with pytest.raises(PermissionError, match="password file"):
        info.mongo_url()


def test_pymongo_uri_authenticates_against_the_experiment_db(tmp_path: Path) -> None:
    info = ClusterInfo.from_stats(_stats(tmp_path))
    assert (
        info.pymongo_uri()
        == "mongodb://pyhoptcluster:s3cretPW@10.231.0.1:27018/hyperopt?directConnection=true&authSource=hyperopt"
    )
