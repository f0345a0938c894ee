"""pyhoptcluster-worker configuration parsing and log masking (no server, no processes)."""

from __future__ import annotations

import logging
import os

import pytest

from pyhoptcluster.worker import main as worker
from pyhoptcluster.worker.config import ConfigError, config_from_mapping, parse_env_file

URL = "mongo://pyhoptcluster:s%40cret@10.0.0.1:27017/hyperopt/jobs"


def test_parse_env_file_follows_systemd_environment_file_syntax():
    text = (
        "# comment\n"
        "; another comment\n"
        "\n"
        "  HYPEROPT_WORKER_MONGO_URL = mongo://h:1/db/jobs  \n"
        'QUOTED="a \\"b\\" c"\n'
        "SINGLE='x # not a comment'\n"
        "CONT=first \\\n"
        "second\n"
        "EMPTY=\n"
    )
    assert parse_env_file(text) == {
        "HYPEROPT_WORKER_MONGO_URL": "mongo://h:1/db/jobs",
        "QUOTED": 'a "b" c',
        "SINGLE": "x # not a comment",
        "CONT": "first second",
        "EMPTY": "",
    }


@pytest.mark.parametrize("line", ["no equals sign", "1BAD=x", "A B=x", "Q='unterminated"])
def test_parse_env_file_rejects_malformed_lines_without_echoing_them(line):
    with pytest.raises(ConfigError, match="line 2") as err:
        parse_env_file("OK=1\n" + line + "\n", source="w.conf")
    assert "unterminated" in str(err.value) or "KEY=VALUE" in str(err.value)
    assert line.split("=")[-1] not in str(err.value) or line.endswith("=x")


def test_config_defaults():
    cfg = config_from_mapping({"HYPEROPT_WORKER_MONGO_URL": URL})
    assert (cfg.poll_interval, cfg.isolation, cfg.exp_key, cfg.workdir, cfg.max_consecutive_failures) == (
        0.1,
        "inprocess",
        None,
        None,
        0,
    )
    assert (cfg.username, cfg.password, cfg.host, cfg.port, cfg.dbname) == (
        "pyhoptcluster",
        "s@cret",
        "10.0.0.1",
        27017,
        "hyperopt",
    )
    assert "s@cret" not in repr(cfg) and "s%40cret" not in repr(cfg)
    assert cfg.masked_url == "mongo://pyhoptcluster:***@10.0.0.1:27017/hyperopt/jobs"


def test_config_all_keys():
    cfg = config_from_mapping(
        {
            "HYPEROPT_WORKER_MONGO_URL": URL,
            "HYPEROPT_WORKER_POLL_INTERVAL": "0.5",
            "HYPEROPT_WORKER_ISOLATION": "Subprocess",
            "HYPEROPT_WORKER_EXP_KEY": "exp1",
            "HYPEROPT_WORKER_WORKDIR": "/tmp/w",
            "HYPEROPT_WORKER_MAX_CONSECUTIVE_FAILURES": "3",
            "UNRELATED": "ignored",
        }
    )
    assert (cfg.poll_interval, cfg.isolation, cfg.exp_key, cfg.workdir, cfg.max_consecutive_failures) == (
        0.5,
        "subprocess",
        "exp1",
        "/tmp/w",
        3,
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "HYPEROPT_WORKER_MONGO_URL is required"),
        ({"HYPEROPT_WORKER_MONGO_URL": "  "}, "HYPEROPT_WORKER_MONGO_URL is required"),
        ({"HYPEROPT_WORKER_MONGO_URL": "http://u:s%40cret@h/x"}, "must look like mongo://"),
        ({"HYPEROPT_WORKER_MONGO_URL": "mongo://u:s%40cret@h:1/db"}, "must look like mongo://"),
        ({"HYPEROPT_WORKER_MONGO_URL": "mongo://u:s%40cret@h:notaport/db/jobs"}, "must look like mongo://"),
        ({"HYPEROPT_WORKER_MONGO_URL": "mongo://u@h:1/db/jobs"}, "has no password"),
        (
            {"HYPEROPT_WORKER_MONGO_URL": URL, "HYPEROPT_WORKER_POLL_INTERVAL": "fast"},
            "POLL_INTERVAL must be",
        ),
        ({"HYPEROPT_WORKER_MONGO_URL": URL, "HYPEROPT_WORKER_POLL_INTERVAL": "-1"}, "POLL_INTERVAL must be"),
        ({"HYPEROPT_WORKER_MONGO_URL": URL, "HYPEROPT_WORKER_POLL_INTERVAL": "nan"}, "POLL_INTERVAL must be"),
        (
            {"HYPEROPT_WORKER_MONGO_URL": URL, "HYPEROPT_WORKER_ISOLATION": "thread"},
            "ISOLATION must be one of",
        ),
        (
            {"HYPEROPT_WORKER_MONGO_URL": URL, "HYPEROPT_WORKER_MAX_CONSECUTIVE_FAILURES": "-2"},
            "MAX_CONSECUTIVE_FAILURES must be an integer >= 0",
        ),
        (
            {"HYPEROPT_WORKER_MONGO_URL": URL, "HYPEROPT_WORKER_MAX_CONSECUTIVE_FAILURES": "two"},
            "MAX_CONSECUTIVE_FAILURES must be an integer >= 0",
        ),
    ],
)
def test_bad_values_raise_config_error_naming_the_key_and_not_the_password(values, message):
    with pytest.raises(ConfigError, match=message) as err:
        config_from_mapping(values, source="w.conf")
    assert str(err.value).startswith("w.conf: ")
    assert "s%40cret" not in str(err.value) and "s@cret" not in str(err.value)


def test_unknown_worker_key_is_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger="pyhoptcluster.worker.main"):
        config_from_mapping({"HYPEROPT_WORKER_MONGO_URL": URL, "HYPEROPT_WORKER_POLL_INTERVALL": "1"})
    assert "unknown key HYPEROPT_WORKER_POLL_INTERVALL" in caplog.text


def test_read_config_file_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        worker.read_config_file(str(tmp_path / "nope.conf"))
    with pytest.raises(ConfigError, match="is a directory"):
        worker.read_config_file(str(tmp_path))
    binary = tmp_path / "binary.conf"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="cannot read config file"):
        worker.read_config_file(str(binary))


def test_world_readable_config_file_is_warned_about(tmp_path, caplog):
    path = tmp_path / "w.conf"
    path.write_text(f"HYPEROPT_WORKER_MONGO_URL={URL}\n")
    os.chmod(path, 0o600)
    with caplog.at_level(logging.WARNING, logger="pyhoptcluster.worker.main"):
        assert worker.load_config(str(path)).host == "10.0.0.1"
    assert "chmod 600" not in caplog.text
    os.chmod(path, 0o644)
    with caplog.at_level(logging.WARNING, logger="pyhoptcluster.worker.main"):
        worker.load_config(str(path))
    assert "chmod 600" in caplog.text


def test_load_config_reads_the_environment_without_a_file():
    cfg = worker.load_config(None, {"HYPEROPT_WORKER_MONGO_URL": URL, "HYPEROPT_WORKER_EXP_KEY": "k"})
    assert cfg.exp_key == "k"


def test_owner_is_hostname_instance_pid():
    assert worker.make_owner("3", hostname="node1", pid=42) == "node1:3:42"
    assert worker.make_owner("1").endswith(f":1:{os.getpid()}")


def test_masking_formatter_hides_the_password_in_every_form():
    fmt = worker.MaskingFormatter("%(message)s", ["s@cret pw"])
    for text in ("raw s@cret pw", "quoted s%40cret%20pw", "plus s%40cret+pw", "mongo://other:xyz@h:1/db"):
        record = logging.LogRecord("x", logging.INFO, __file__, 1, text, None, None)
        out = fmt.format(record)
        assert "s@cret" not in out and "s%40cret" not in out and "xyz" not in out
        assert "***" in out
