"""Run by the worker venv's Python (tasks/check.yml): report what the objective will find there.

argv[1]: JSON list of import names that must import. Prints one JSON object: python (version),
packages (distribution -> version or null), missing (import name -> error). Standard library only,
and it imports nothing but the required packages (hyperopt's import alone takes ~2 s).
"""

import importlib
import importlib.metadata
import json
import platform
import sys

report = {"python": platform.python_version(), "executable": sys.executable, "packages": {}, "missing": {}}
for dist in ("hyperopt", "cloudpickle", "pymongo", "pyhoptcluster"):
    try:
        report["packages"][dist] = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        report["packages"][dist] = None
for name in json.loads(sys.argv[1] if len(sys.argv) > 1 else "[]"):
    try:
        importlib.import_module(name)
    except BaseException as exc:
        report["missing"][name] = f"{type(exc).__name__}: {exc}"
print(json.dumps(report))
