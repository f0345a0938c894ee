"""The rules behind the operations commands: GPU pinning (one rule for the role, the config parser and
the worker), the runtime comparison of ``check``, and the error text fmin's failure quotes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pyhoptcluster.compat.failures import _error_text
from pyhoptcluster.control.check import HostCheck, compare
from pyhoptcluster.validation import check_gpus, gpu_config_value, gpu_of_instance
from pyhoptcluster.worker.config import ConfigError, config_from_mapping

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "collections"))
from ansible_collections.pyhoptcluster.cluster.plugins.filter.inputs import gpu_devices, input_problems

URL = "mongo://u:p@10.0.0.1:27017/hyperopt/jobs"


@pytest.mark.parametrize(
    ("value", "devices"),
    [
        (None, []),
        (0, []),
        ([], []),
        (2, ["0", "1"]),
        ([3], ["3"]),
        ([0, "GPU-8f0e-11"], ["0", "GPU-8f0e-11"]),
        ("2", ["0", "1"]),  # -e hyperopt_worker_gpus=2
        ("0,2", ["0", "2"]),
        ("3,", ["3"]),  # what the config file holds for a single device
    ],
)
def test_gpus_are_a_count_or_a_list_of_device_ids(value, devices) -> None:
    assert check_gpus(value, text=True) == devices
    # the config line reads back as the same devices, never a one-device list as a count
    assert check_gpus(gpu_config_value(value), text=True) == devices
    assert gpu_devices(value) == gpu_config_value(value)


@pytest.mark.parametrize("bad", [-1, 257, [1, 1], ["a b"], ["-1"], 1.5, True, {"a": 1}])
def test_bad_gpus_are_refused_by_the_role_and_the_worker_alike(bad) -> None:
    with pytest.raises(ValueError, match="hyperopt_worker_gpus"):
        check_gpus(bad, text=True)
    problems = input_problems({"hyperopt_worker_gpus": bad})
    assert len(problems) == 1 and "hyperopt_worker_gpus" in problems[0]
    if isinstance(bad, list):
        with pytest.raises(ConfigError, match="HYPEROPT_WORKER_GPUS"):
            config_from_mapping(
                {"HYPEROPT_WORKER_MONGO_URL": URL, "HYPEROPT_WORKER_GPUS": ",".join(map(str, bad)) + ","}
            )


def test_kth_instance_on_a_host_gets_device_k_mod_len() -> None:
    config = config_from_mapping(
        {
            "HYPEROPT_WORKER_MONGO_URL": URL,
            "HYPEROPT_WORKER_GPUS": "0,1",
            "HYPEROPT_WORKER_HOST_INSTANCES": "2,5,8",
        }
    )
    assert [config.gpu_for(i) for i in ("2", "5", "8")] == ["0", "1", "0"]
    assert config_from_mapping({"HYPEROPT_WORKER_MONGO_URL": URL}).gpu_for("1") is None
    # started by hand, not in the placement: counted by its id
    assert gpu_of_instance(["0", "1"], [], "2") == "1"


def _report(python="3.11.4", **packages):
    base = {"hyperopt": "0.3.0", "cloudpickle": "3.1.3", "pymongo": "4.20.1"}
    return {"python": python, "packages": {**base, **packages}, "missing": {}}


DRIVER = HostCheck("driver", "3.11.7", {"hyperopt": "0.3.0", "cloudpickle": "3.1.3", "pymongo": "4.6.0"})


def test_same_minor_python_and_pymongo_major_pass() -> None:
    result = compare({"a": _report(), "b": _report()}, driver=DRIVER)
    assert result.ok, result.problems
    assert "a" in result.table() and "ok" in result.table()


def test_each_mismatch_is_named_by_host() -> None:
    missing = {**_report(), "missing": {"sklearn": "ModuleNotFoundError: No module named 'sklearn'"}}
    result = compare(
        {
            "a": _report(python="3.12.1"),
            "b": _report(cloudpickle="3.0.0"),
            "c": missing,
            "d": {"error": "no worker runtime at /v"},
        },
        require=["sklearn"],
        expected_hosts=["a", "b", "c", "d", "e"],
        driver=DRIVER,
    )
    text = "\n".join(result.problems)
    assert "a: Python 3.12.1 on the worker, 3.11.7 on the driver" in text
    assert "b: cloudpickle 3.0.0 on the worker, 3.1.3 on the driver" in text
    assert "c: cannot import sklearn" in text
    assert "d: no worker runtime" in text
    assert "e: no report" in text
    assert len(result.problems) == 5 and not result.ok


def test_error_text_is_type_and_message() -> None:
    assert _error_text(["<class 'ModuleNotFoundError'>", "No module named 'x'"]) == (
        "ModuleNotFoundError: No module named 'x'"
    )
    assert _error_text(["<class 'pyhoptcluster.worker.liveness.WorkerLost'>", "gone"]) == "WorkerLost: gone"
