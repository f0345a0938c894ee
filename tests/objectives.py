"""Objectives for tests that run real workers.

hyperopt pickles the domain (with cloudpickle) into a GridFS attachment; functions of an importable
module are pickled by reference, so worker processes must be able to import this module as
``objectives``: start them with ``PYTHONPATH=<repo>/tests``.
"""

from __future__ import annotations

import os
import time

from hyperopt import STATUS_OK


def quadratic(x: float) -> dict:
    """(x - 3)^2 after a short sleep; the result names the process that ran it."""
    time.sleep(0.02)
    return {"loss": (x - 3.0) ** 2, "status": STATUS_OK, "pid": os.getpid()}


def gated(x: float) -> dict:
    """Blocks until the file named by ``$PYHOPTCLUSTER_TEST_GATE`` exists, writing
    ``$PYHOPTCLUSTER_TEST_GATE.started`` first (so a test knows the job is running)."""
    gate = os.environ["PYHOPTCLUSTER_TEST_GATE"]
    with open(gate + ".started", "a") as f:
        f.write(f"{os.getpid()}\n")
    while not os.path.exists(gate):
        time.sleep(0.05)
    return {"loss": float(x), "status": STATUS_OK, "pid": os.getpid()}


def failing(x: float) -> float:
    raise ValueError(f"objective failed on purpose for x={x}")


def crash(x: float) -> float:
    """Kills its own process, as a segfault or the OOM killer would."""
    import signal

    os.kill(os.getpid(), signal.SIGKILL)
    return 0.0


def first_call_sleeps(x: float) -> dict:
    """The first call (of all processes, marked by the file ``$PYHOPTCLUSTER_TEST_MARK``) sleeps
    60 s, as a trial stuck for hours would; later calls return at once."""
    mark = os.environ["PYHOPTCLUSTER_TEST_MARK"]
    try:
        fd = os.open(mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return {"loss": float(x), "status": STATUS_OK, "pid": os.getpid()}
    os.close(fd)
    time.sleep(60)
    return {"loss": float(x), "status": STATUS_OK, "pid": os.getpid()}


def stop_self(x: float) -> float:
    """Freezes its own process (SIGSTOP), as a hung worker or a host that stopped answering would."""
    import signal

    os.kill(os.getpid(), signal.SIGSTOP)
    return 0.0


def counted(x: float) -> dict:
    """(x - 3)^2, and one line "<pid> <x>" appended to ``$PYHOPTCLUSTER_TEST_CALLS`` per call, so a test
    can count how often each trial ran."""
    with open(os.environ["PYHOPTCLUSTER_TEST_CALLS"], "a") as f:
        f.write(f"{os.getpid()} {float(x)!r}\n")
    return {"loss": (x - 3.0) ** 2, "status": STATUS_OK, "pid": os.getpid()}


def sleep_02(x: float) -> float:
    """A 0.2 s objective, as in the utilisation benchmarks."""
    time.sleep(0.2)
    return (x - 1.0) ** 2


def report_objective(p: dict) -> dict:
    """For the report tests (tests/integration/report_run.py): a loss over a mixed space
    (uniform, loguniform, choice, quniform) that takes 30-130 ms, raises for one corner of it (and,
    when ``$PYHOPTCLUSTER_TEST_ERROR_MARK`` is set, for the first "poly" trial of all processes, so
    a run has an error trial whatever was sampled: P(no poly in 20 random trials) = 3e-4), and,
    on the first call of all processes when ``$PYHOPTCLUSTER_TEST_MARK`` is set, freezes its own
    process (SIGSTOP), so the stale-job sweep takes that trial back and another worker reruns it.
    ``$PYHOPTCLUSTER_TEST_SLEEP`` adds seconds to every call."""
    import math
    import signal

    def first(mark: str | None) -> bool:
        """True for the one call of all processes that creates ``mark`` (none without a mark)."""
        if not mark:
            return False
        try:
            os.close(os.open(mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True

    if first(os.environ.get("PYHOPTCLUSTER_TEST_MARK")):
        os.kill(os.getpid(), signal.SIGSTOP)
    x, kind = float(p["x"]), p["kind"]
    time.sleep(0.03 + 0.02 * abs(x) + float(os.environ.get("PYHOPTCLUSTER_TEST_SLEEP", "0")))
    if kind == "poly" and (x > 2.5 or first(os.environ.get("PYHOPTCLUSTER_TEST_ERROR_MARK"))):
        raise ValueError(f"poly model diverged at x={x:.3f}")
    offset = {"linear": 0.5, "rbf": 0.0, "poly": 1.0}[kind]
    loss = (x - 1.0) ** 2 + offset + 0.1 * (math.log10(p["lr"]) + 3.0) ** 2 + 0.02 * p["depth"]
    return {"loss": loss, "status": STATUS_OK}
