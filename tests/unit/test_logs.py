"""The log view's rules without a cluster: the times of log lines (the collection's ``log_read`` module,
on real files), merging, ``--since``, and what ``follow`` yields on each read."""

from __future__ import annotations

import datetime
import logging
import sys
import time
from pathlib import Path

import pytest

from pyhoptcluster.control.logs import LogLine, follow, merge, parse_since

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "collections") not in sys.path:
    sys.path.insert(0, str(REPO / "collections"))
from ansible_collections.pyhoptcluster.cluster.plugins.modules import log_read  # noqa: E402


def test_times_of_python_logging_iso_and_mongod_json_lines() -> None:
    local = time.mktime(time.strptime("2026-12-03 09:45:01", "%Y-%m-%d %H:%M:%S"))
    assert log_read.line_time("2026-12-03 09:45:01,123 INFO worker[1] 42 x: starting") == pytest.approx(
        local + 0.123
    )
    utc = datetime.datetime(2026, 12, 3, 9, 45, 1, tzinfo=datetime.UTC).timestamp()
    assert log_read.line_time("2026-12-03T09:45:01.5+00:00 something") == pytest.approx(utc + 0.5)
    assert log_read.line_time('{"t":{"$date":"2026-12-03T09:45:01.250+00:00"},"s":"I"}') == pytest.approx(
        utc + 0.25
    )
    assert log_read.line_time("Traceback (most recent call last):") is None
    assert log_read.line_time("2026-13-45 99:99:99,000 not a time") is None


def test_a_file_written_by_python_logging_gives_each_line_its_time(tmp_path: Path) -> None:
    path = tmp_path / "worker-3.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("test_logs_file")
    logger.addHandler(handler)
    logger.propagate = False
    before = time.time()
    try:
        logger.warning("first")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logger.exception("second")
    finally:
        handler.close()
        logger.removeHandler(handler)
    records = log_read.file_records(str(path), "worker", 100, None)
    texts = [r[3] for r in records]
    assert texts[0].endswith("WARNING first") and texts[-1] == "RuntimeError: boom"
    assert {r[2] for r in records} == {3} and {r[1] for r in records} == {"worker"}
    # the traceback's lines carry the time of "second"
    assert len({r[0] for r in records[1:]}) == 1 and before - 1 <= records[0][0] <= time.time() + 1
    # the newest lines only, and those since a time
    assert [r[3] for r in log_read.file_records(str(path), "worker", 1, None)] == ["RuntimeError: boom"]
    assert log_read.file_records(str(path), "worker", 100, time.time() + 60) == []


def test_merge_orders_by_time_and_keeps_a_sources_order() -> None:
    merged = merge(
        {
            "node1": [[2.0, "worker", 1, "b1"], [2.0, "worker", 1, "b2"], [5.0, "worker", 1, "d"]],
            "localhost": [[1.0, "server", None, "a"], [3.0, "server", None, "c"]],
        }
    )
    assert [line.text for line in merged] == ["a", "b1", "b2", "c", "d"]
    assert merged[1].tag == "worker[1]" and merged[0].tag == "server"
    assert str(merged[0]).endswith(" localhost server: a")


def test_since_takes_durations_dates_and_says_what_it_wants() -> None:
    assert parse_since("10m", now=1000.0) == 400.0
    assert parse_since("2h", now=10000.0) == 2800.0
    assert parse_since(12.5) == 12.5 and parse_since(None) is None
    assert (
        parse_since("2026-12-03T09:30:00+00:00")
        == datetime.datetime(2026, 12, 3, 9, 30, tzinfo=datetime.UTC).timestamp()
    )
    with pytest.raises(ValueError, match="neither a duration"):
        parse_since("yesterday")


def test_follow_yields_each_line_once_and_reads_from_the_newest_time() -> None:
    a, b, c = (LogLine(t, "h", "worker", 1, text) for t, text in ((1.0, "a"), (2.0, "b"), (2.0, "c")))
    d = LogLine(3.0, "h", "worker", 1, "l3")
    reads = iter([[a, b], [b, c], [b, c, d], []])
    asked: list[float | None] = []

    def read(since: float | None) -> list[LogLine]:
        asked.append(since)
        return next(reads)

    calls = iter([False, False, False, True])
    got = list(follow(read, None, interval=0, stop=lambda: next(calls)))
    assert got == [a, b, c, d]
    assert asked == [None, 2.0, 2.0, 3.0]
