"""Run by a base Python (tasks/install_runtime.yml): what the worker venv reuses of its packages.

argv[1:]: the requirements the workers need (hyperopt_worker_pip_packages, PEP 508 strings). Prints
one JSON object: site (its site-packages directories, which the worker venv's ``.pth`` adds), python
(major.minor), ok (every requirement is installed there, in a version it allows) and missing
(requirement -> what is wrong: pip installs those into the venv). Standard library plus
``packaging`` (ansible-core's dependency, or pip's vendored copy); it imports none of the packages it
checks.
"""

import importlib.metadata
import json
import platform
import site
import sys

try:
    from packaging.requirements import Requirement
except ImportError:  # a Python without packaging: pip carries a copy
    try:
        from pip._vendor.packaging.requirements import Requirement
    except ImportError:
        Requirement = None

report = {
    "python": ".".join(platform.python_version_tuple()[:2]),
    "executable": sys.executable,
    "site": [d for d in site.getsitepackages() if d],
    "missing": {},
}
for text in sys.argv[1:]:
    if Requirement is None:
        report["missing"][text] = "cannot check: neither packaging nor pip is importable there"
        continue
    req = Requirement(text)
    try:
        version = importlib.metadata.version(req.name)
    except importlib.metadata.PackageNotFoundError:
        report["missing"][text] = "not installed"
        continue
    if req.specifier and not req.specifier.contains(version, prereleases=True):
        report["missing"][text] = f"{version} is installed"
report["ok"] = not report["missing"]
print(json.dumps(report))
