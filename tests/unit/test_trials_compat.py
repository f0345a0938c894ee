"""Pure functions of the pymongo-4 compatibility layer (no server)."""

from __future__ import annotations

import urllib.parse

import pytest
from bson.errors import InvalidDocument
from hyperopt import mongoexp

import pyhoptcluster  # noqa: F401  (applies the patch)
from pyhoptcluster.compat import trials


def test_import_applies_the_patch_once():
    assert trials.is_applied()
    patched = mongoexp.MongoJobs.reserve
    trials.apply()
    assert mongoexp.MongoJobs.reserve is patched
    assert mongoexp.parse_url is trials.parse_url
    assert mongoexp.connection_with_tunnel is trials.connection_with_tunnel


def test_every_stock_function_calling_a_removed_pymongo3_api_is_replaced():
    import inspect

    removed = ("find_and_modify(", ".count()", ".insert(", ".remove(", ".authenticate(", "collection.update(")
    members = [(name, obj) for name, obj in vars(mongoexp).items() if inspect.isfunction(obj)]
    for cls in (mongoexp.MongoJobs, mongoexp.MongoTrials, mongoexp.MongoWorker, mongoexp.MongoCtrl):
        for name, obj in vars(cls).items():
            obj = obj.__func__ if isinstance(obj, classmethod | staticmethod) else obj
            if inspect.isfunction(obj):
                members.append((f"{cls.__name__}.{name}", obj))
    still_stock = [
        name
        for name, func in members
        if func.__module__ == mongoexp.__name__ and any(call in inspect.getsource(func) for call in removed)
    ]
    assert still_stock == []


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # hyperopt's own test_parse_url cases: unchanged
        (
            "mongo://hyperopt:foobar@127.0.0.1:27017/hyperoptdb/jobs",
            ("mongo", "hyperopt", "foobar", "127.0.0.1", 27017, "hyperoptdb", "jobs", None),
        ),
        (
            "mongo://hyperopt:foobar@127.0.0.1:27017/hyperoptdb/jobs?authSource=db1",
            ("mongo", "hyperopt", "foobar", "127.0.0.1", 27017, "hyperoptdb", "jobs", "db1"),
        ),
        ("mongo://localhost:22334/foo/jobs", ("mongo", None, None, "localhost", 22334, "foo", "jobs", None)),
        # a URL without a port means MongoDB's default (stock crashed on int(None))
        (
            "mongo://localhost/hyperopt/jobs",
            ("mongo", None, None, "localhost", 27017, "hyperopt", "jobs", None),
        ),
    ],
)
def test_parse_url_keeps_stock_results(url, expected):
    assert trials.parse_url(url) == expected


def test_parse_url_unquotes_percent_encoded_user_and_password():
    password = "p@ss word:/%?#"
    url = (
        f"mongo://{urllib.parse.quote('us:er', safe='')}:{urllib.parse.quote(password, safe='')}@h:1/db/jobs"
    )
    _, user, pw, host, port, db, coll, _ = trials.parse_url(url)
    assert (user, pw, host, port, db, coll) == ("us:er", password, "h", 1, "db", "jobs")


def test_parse_url_reads_the_password_file_for_a_user_without_password(tmp_path):
    pwfile = tmp_path / "pw"
    pwfile.write_text("from-file\n")
    assert trials.parse_url("mongo://bob@h:1/db/jobs", pwfile=str(pwfile))[2] == "from-file"
    assert trials.parse_url("mongo://bob@h:1/db/jobs")[2] is None


def test_parse_url_without_collection_raises_value_error():
    with pytest.raises(ValueError, match="/<dbname>/<collection>"):
        trials.parse_url("mongo://h:1/db")


@pytest.mark.parametrize(
    ("user", "dbname", "auth_db", "expected"),
    [
        ("bob", "exp", "other", "other"),  # authSource from the URL wins
        ("hyperopt", "exp", None, "admin"),  # hyperopt's special user
        ("hyperopt", "exp", "exp2", "exp2"),
        ("pyhoptcluster", "exp", None, "exp"),  # else the URL's database
        (None, "exp", "other", None),  # no user, no authentication
    ],
)
def test_auth_source_follows_hyperopt_rule(user, dbname, auth_db, expected):
    assert trials.auth_source(user, dbname, auth_db) == expected


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("mongo://u:secret@h:1/db/jobs", "mongo://u:***@h:1/db/jobs"),
        ("mongo://u:p%40ss@h:1/db/jobs?authSource=a", "mongo://u:***@h:1/db/jobs?authSource=a"),
        ("mongo://h:1/db/jobs", "mongo://h:1/db/jobs"),
        ("mongo://u@h:1/db/jobs", "mongo://u@h:1/db/jobs"),
        ("not a url", "not a url"),
    ],
)
def test_mask_url_hides_only_the_password(url, masked):
    assert trials.mask_url(url) == masked


def test_poll_sleep_interval_honours_short_intervals_and_keeps_stock_above_one_second():
    assert trials.poll_sleep_interval(0.1) == 0.1
    assert trials.poll_sleep_interval(0) == 0.0
    assert trials.poll_sleep_interval(5, rand=0.0) == 1.0  # stock: uniform(1, poll)
    assert trials.poll_sleep_interval(5, rand=1.0) == 5.0
    assert 1.0 <= trials.poll_sleep_interval(3) <= 3.0


def test_check_keys_refuses_what_pymongo3_insert_refused():
    trials._check_keys({"a": {"b": [1, {"c": 2}]}, "misc": {"vals": {"x": [1.0]}}})
    for bad in ({"$set": 1}, {"a": {"b.c": 1}}, {"a": [{"$x": 1}]}):
        with pytest.raises(InvalidDocument):
            trials._check_keys(bad)
