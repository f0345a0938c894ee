"""The lease, trial-timeout and outage rules of the worker and the driver (no server, no processes)."""

from __future__ import annotations

import pytest

from pyhoptcluster.compat import outage
from pyhoptcluster.worker import liveness
from pyhoptcluster.worker.config import ConfigError, config_from_mapping

URL = "mongo://h:1/db/jobs"


def config(**keys: str):
    return config_from_mapping(
        {"HYPEROPT_WORKER_MONGO_URL": URL, **{f"HYPEROPT_WORKER_{k}": v for k, v in keys.items()}}
    )


def test_defaults_beat_every_10_s_give_up_after_60_s_and_3_attempts_with_no_limits():
    cfg = config()
    assert (cfg.heartbeat, cfg.heartbeat_grace, cfg.max_attempts) == (10.0, 60.0, 3)
    assert (cfg.trial_timeout, cfg.max_jobs, cfg.stop_timeout) == (0.0, 0, 15.0)
    assert cfg.lease.fields() == {"heartbeat_grace": 60.0, "max_attempts": 3}


def test_a_long_heartbeat_raises_the_default_grace_to_twice_it():
    assert config(HEARTBEAT="45").heartbeat_grace == 90.0


def test_job_child_gets_the_worker_stop_timeout_less_five_seconds_so_its_job_is_handed_back_in_time():
    assert config(STOP_TIMEOUT="30").child_stop_timeout == 25.0
    assert config(STOP_TIMEOUT="2").child_stop_timeout == 1.0


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"HEARTBEAT": "-1"}, "HEARTBEAT must be a number of seconds >= 0"),
        ({"HEARTBEAT": "fast"}, "HEARTBEAT must be a number of seconds >= 0"),
        ({"HEARTBEAT": "10", "HEARTBEAT_GRACE": "15"}, "at least twice HYPEROPT_WORKER_HEARTBEAT"),
        ({"MAX_ATTEMPTS": "0"}, "MAX_ATTEMPTS must be an integer >= 1"),
        ({"TRIAL_TIMEOUT": "-1"}, "TRIAL_TIMEOUT must be a number of seconds >= 0"),
        ({"MAX_JOBS": "1.5"}, "MAX_JOBS must be an integer >= 0"),
        ({"STOP_TIMEOUT": "0.5"}, "STOP_TIMEOUT must be a number of seconds >= 1"),
    ],
)
def test_bad_lease_and_limit_values_name_the_key(keys, message):
    with pytest.raises(ConfigError, match=message):
        config(**keys)


def test_owner_name_drops_the_pid_for_messages():
    assert liveness.owner_name("node-1:3:4242") == "node-1:3"
    assert liveness.owner_name(["stock-host:99"]) == "stock-host"
    assert liveness.owner_name("odd") == "odd"


def test_outage_timeout_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(outage.ENV, raising=False)
    assert outage.outage_timeout() == 300.0
    monkeypatch.setenv(outage.ENV, "120")
    assert outage.outage_timeout() == 120.0
    monkeypatch.setenv(outage.ENV, "soon")
    with pytest.raises(ValueError, match="PYHOPTCLUSTER_SERVER_OUTAGE_TIMEOUT must be a number"):
        outage.outage_timeout()


def test_heartbeat_zero_turns_the_lease_off():
    cfg = config(HEARTBEAT="0")
    assert not cfg.lease.on
