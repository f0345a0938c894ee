# -*- coding: utf-8 -*-
# Copyright: pyhoptcluster developers
# Apache License 2.0 (see LICENSE)
"""input_problems: the roles' check of their variables against pyhoptcluster's input rules.

Documentation: input_problems.yml next to this file."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleFilterError
from ansible_collections.pyhoptcluster.cluster.plugins.module_utils import rules

# Role variable -> (rule in pyhoptcluster.validation, keyword arguments). The rules take text too:
# values given with -e arrive as strings.
_RULES = {
    "hyperopt_mongodb_dbname": ("check_dbname", {}),
    "hyperopt_mongodb_port": ("check_ports", {"text": True}),
    "hyperopt_worker_count": ("check_worker_count", {"text": True}),
    "hyperopt_worker_poll_interval": ("check_poll_interval", {"text": True}),
    "hyperopt_worker_gpus": ("check_gpus", {"text": True}),
}
# limits where 0 means none: name -> whether it is an integer
_LIMITS = {"hyperopt_worker_trial_timeout": False, "hyperopt_worker_max_jobs": True}


def input_problems(variables, host=None, hosts=None, caps=None, weights=None):
    """The rule each variable of ``variables`` ({name: value}) breaks, as a list of messages ([] when
    none). hyperopt_worker_max and hyperopt_worker_weight are checked as ``host``'s; given ``hosts``
    (with every host's ``caps`` and ``weights``), hyperopt_worker_count must fit on them too."""
    try:
        validation = rules.load()
    except ImportError as exc:
        raise AnsibleFilterError("input_problems: %s" % exc) from None
    if not isinstance(variables, dict):
        raise AnsibleFilterError(
            "input_problems: expected a dict of variable name to value, got %r" % (variables,)
        )
    checks = []
    lease = ("hyperopt_worker_heartbeat", "hyperopt_worker_heartbeat_grace", "hyperopt_worker_max_attempts")
    if any(name in variables for name in lease):
        values = tuple(variables.get(name) for name in lease)
        checks.append((validation.check_lease, (*values, lease), {"text": True}))
    for name, value in variables.items():
        if name in lease:
            continue
        if name in _LIMITS:
            checks.append((validation.check_limit, (value, name), {"text": True, "integer": _LIMITS[name]}))
            continue
        if name in _RULES:
            rule, kwargs = _RULES[name]
            checks.append((getattr(validation, rule), (value, name), kwargs))
        elif name == "hyperopt_worker_max":
            checks.append((validation.check_worker_cap, (host, value), {}))
        elif name == "hyperopt_worker_weight":
            checks.append((validation.check_worker_weight, (host, value), {}))
        else:
            raise AnsibleFilterError("input_problems: no rule for %s" % name)
    if hosts is not None and "hyperopt_worker_count" in variables:
        args = (hosts, variables["hyperopt_worker_count"], caps, weights)
        checks.append((validation.check_placement, args, {}))
    problems = []
    for check, args, kwargs in checks:
        try:
            check(*args, **kwargs)
        except ValueError as exc:
            if str(exc) not in problems:
                problems.append(str(exc))
    return problems


def gpu_devices(value):
    """The HYPEROPT_WORKER_GPUS value of a hyperopt_worker_gpus setting (a count or a list of device
    ids): the device ids joined by commas ('' for none), by pyhoptcluster's one rule for it."""
    try:
        return rules.load().gpu_config_value(value)
    except ImportError as exc:
        raise AnsibleFilterError("gpu_devices: %s" % exc) from None
    except ValueError as exc:
        raise AnsibleFilterError("ValueError: %s" % exc) from None


class FilterModule(object):
    def filters(self):
        return {"input_problems": input_problems, "gpu_devices": gpu_devices}
