"""Run by a base Python (tasks/install_runtime.yml): the site-packages the worker venv reuses.

Prints one JSON object: site (the base's site-packages directories, which the worker venv's ``.pth``
adds after its own) and python (major.minor, the venv's lib/pythonX.Y). What the base lacks of the
workers' packages pip installs into the venv afterwards. Standard library only.
"""

import json
import platform
import site

print(
    json.dumps(
        {
            "python": ".".join(platform.python_version_tuple()[:2]),
            "site": [d for d in site.getsitepackages() if d],
        }
    )
)
