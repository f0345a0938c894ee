# -*- coding: utf-8 -*-
# Copyright: pyhoptcluster developers
# Apache License 2.0 (see LICENSE)
"""The input rules (dbname, ports, worker count, caps, weights, poll interval) for the collection's
controller-side plugins. They are written once, in the pyhoptcluster Python package
(pyhoptcluster/validation.py), which the facade, the CLI and the workers use too.

The package is a requirement of this collection on the control node, like any Python library a
collection's plugins need there (it brings ansible-core with it, so installing it gives a matching
Ansible). validation.py is loaded from wherever the import system finds the package (an editable
checkout or a wheel) without running the package's __init__, which imports hyperopt (~2 s): these
plugins run in every Ansible worker process.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import importlib.util
import os
import sys

_MODULE = "_pyhoptcluster_validation"


def load():
    """pyhoptcluster.validation, or ImportError saying how to install it."""
    for name in ("pyhoptcluster.validation", _MODULE):
        if name in sys.modules:  # the facade's own process, or loaded before
            return sys.modules[name]
    spec = importlib.util.find_spec("pyhoptcluster")  # finds the package, does not import it
    path = None
    for location in (spec.submodule_search_locations or []) if spec else []:
        if os.path.isfile(os.path.join(location, "validation.py")):
            path = os.path.join(location, "validation.py")
            break
    if path is None:
        raise ImportError(
            "the pyhoptcluster Python package is needed on the control node (its input rules): "
            "pip install pyhoptcluster into the Python that runs Ansible (%s)" % sys.executable
        )
    module_spec = importlib.util.spec_from_file_location(_MODULE, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    sys.modules[_MODULE] = module
    return module
