"""pyhoptcluster.compat.driver: fmin's driver (hyperopt's own FMinIter) takes its poll interval from the
trials object when it has one."""

from __future__ import annotations

import numpy as np
import pytest
from hyperopt import Trials, hp, rand
from hyperopt.base import Domain
from hyperopt.fmin import FMinIter

import pyhoptcluster  # noqa: F401  (applies the patch)
from pyhoptcluster.compat import driver


def _iter(trials, **kwargs) -> FMinIter:
    domain = Domain(lambda x: x, hp.uniform("x", 0, 1))
    return FMinIter(rand.suggest, domain, trials, np.random.default_rng(0), **kwargs)


class PolledTrials(Trials):
    """A real hyperopt Trials run as if asynchronous (as MongoTrials is)."""

    asynchronous = True


def test_import_applies_it_once():
    assert driver.is_applied()
    init = FMinIter.__init__
    driver.apply()
    assert FMinIter.__init__ is init


def test_without_the_attribute_hyperopt_keeps_its_one_second():
    assert _iter(PolledTrials()).poll_interval_secs == 1.0


@pytest.mark.parametrize("value", [0.2, "0.05", 3])
def test_the_trials_objects_interval_is_used(value):
    trials = PolledTrials()
    trials.poll_interval_secs = value
    assert _iter(trials).poll_interval_secs == float(value)


def test_an_explicit_argument_wins():
    trials = PolledTrials()
    trials.poll_interval_secs = 0.2
    assert _iter(trials, poll_interval_secs=0.5).poll_interval_secs == 0.5


@pytest.mark.parametrize("value", [0, -1, "soon", float("inf"), float("nan"), True])
def test_an_invalid_interval_is_refused_with_what_to_do(value):
    trials = PolledTrials()
    trials.poll_interval_secs = value
    with pytest.raises(ValueError, match=r"positive number of seconds .* delete the attribute"):
        _iter(trials)
