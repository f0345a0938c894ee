"""Every role's defaults/main.yml and meta/argument_specs.yml (entry point ``main``) list the same
variables, and every option is documented with a type and a description.

Generic over ``roles/*``: a new role is covered the moment it exists.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROLES = Path(__file__).resolve().parents[2] / "roles"
ROLE_DIRS = sorted(p for p in ROLES.iterdir() if (p / "tasks" / "main.yml").is_file())


def _load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    return data or {}


def _main_options(role: Path) -> dict:
    specs = _load(role / "meta" / "argument_specs.yml").get("argument_specs") or {}
    return (specs.get("main") or {}).get("options") or {}


def test_there_are_roles() -> None:
    assert ROLE_DIRS, f"no roles found under {ROLES}"


@pytest.mark.parametrize("role", ROLE_DIRS, ids=lambda p: p.name)
def test_defaults_match_argument_specs_key_for_key(role: Path) -> None:
    defaults = set(_load(role / "defaults" / "main.yml"))
    options = set(_main_options(role))
    assert defaults - options == set(), (
        f"{role.name}: in defaults/main.yml but not in meta/argument_specs.yml"
    )
    assert options - defaults == set(), (
        f"{role.name}: in meta/argument_specs.yml but not in defaults/main.yml"
    )


@pytest.mark.parametrize("role", ROLE_DIRS, ids=lambda p: p.name)
def test_public_variables_carry_the_role_prefix(role: Path) -> None:
    wrong = [name for name in _load(role / "defaults" / "main.yml") if not name.startswith(role.name + "_")]
    assert wrong == [], f"{role.name}: defaults without the '{role.name}_' prefix"


@pytest.mark.parametrize("role", ROLE_DIRS, ids=lambda p: p.name)
def test_every_option_has_a_type_and_a_description(role: Path) -> None:
    incomplete = [
        name
        for name, spec in _main_options(role).items()
        if not spec.get("type") or not spec.get("description")
    ]
    assert incomplete == [], f"{role.name}: options without type or description"
