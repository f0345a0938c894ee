"""The drain's checks, the lines ``pyhoptcluster drain`` prints and its options (no server needed)."""

from __future__ import annotations

import pytest

from pyhoptcluster.control import cli
from pyhoptcluster.control.drain import DrainResult, check_host, check_timeout, result_lines
from pyhoptcluster.control.status import ENDED


def test_an_unknown_host_is_refused_naming_the_known_ones() -> None:
    check_host(None, [])
    check_host("node-a", ["node-a", "node-b"])
    with pytest.raises(ValueError, match=r"'node-z' runs no workers.*known hosts: node-a, node-b"):
        check_host("node-z", ["node-b", "node-a"])
    with pytest.raises(ValueError, match="known hosts: none"):
        check_host("node-z", [])
    with pytest.raises(ValueError, match="inventory host name"):
        check_host("", ["node-a"])


@pytest.mark.parametrize("bad", [-1, "5", True, float("nan")])
def test_a_timeout_is_seconds_or_none(bad: object) -> None:
    check_timeout(None)
    check_timeout(0)
    with pytest.raises(ValueError, match="timeout must be"):
        check_timeout(bad)  # type: ignore[arg-type]


def test_result_lines_name_each_worker_and_what_became_of_it() -> None:
    assert result_lines(DrainResult([], [], [], [], [])) == ["no running workers to drain"]
    ids = [("a", 1), ("a", 2), ("b", 1), ("b", 2)]
    result = DrainResult(ids, [ids[0]], [ids[1]], [ids[2]], [ids[3]])
    lines = result_lines(result)
    assert lines[0] == "a worker 1: drained" and "a worker 2: ended" in lines[1]
    assert "b worker 1: still running at the timeout" in lines[2] and "b worker 2: gone" in lines[3]
    assert not result.complete
    asked = result_lines(DrainResult(ids[:1], [], [], ids[:1], [], waited=False))
    assert asked == ["a worker 1: drain requested (exits after its running trial)"]


def test_drained_is_a_clean_end_and_the_cli_takes_the_drain_options() -> None:
    assert "drained" in ENDED
    args = cli._parser().parse_args(["drain", "-i", "inv", "--host", "h", "--timeout", "5", "--no-wait"])
    assert (args.command, args.host, args.timeout, args.no_wait, args.quiet) == (
        "drain",
        "h",
        5.0,
        True,
        False,
    )
