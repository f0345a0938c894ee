"""One version: the installed distribution's (pyproject.toml), ``__version__``, ``--version`` and the
Ansible collection's galaxy.yml all say the same."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

import pyhoptcluster

REPO = Path(__file__).resolve().parents[2]
GALAXY = REPO / "galaxy.yml"


def test_package_cli_and_collection_carry_the_project_version() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert pyhoptcluster.__version__ == project
    out = subprocess.run(
        [str(Path(sys.executable).parent / "pyhoptcluster"), "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.strip() == f"pyhoptcluster {project}", out
    assert str(yaml.safe_load(GALAXY.read_text())["version"]) == project
