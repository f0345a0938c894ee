"""Preflight of the workers' runtime against the driver's: what ``pyhoptcluster check`` and
``HyperoptCluster.check()`` report, and what ``start()`` warns about.

An objective is pickled by the driver (cloudpickle, in the Python running ``fmin``) and unpickled in
every worker's venv: a different Python minor version, hyperopt or cloudpickle there, or a package the
objective imports that the workers lack, makes every trial fail (hyperopt #911, #312) with the cause
only in a worker log. ``playbooks/check.yml`` (the worker role's ``tasks_from: check``) reports each
worker host's versions and imports; this module compares them with the driver's and names each
problem by host. Control side; standard library only.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import platform
from collections.abc import Mapping, Sequence
from typing import Any

from pyhoptcluster.errors import PyhoptclusterError

STATS_KEY = "hyperopt_check"
# distribution -> how much of its version must agree with the driver's (parts of major.minor.patch;
# None: all of it). cloudpickle's pickles and hyperopt's job documents are only promised to round-trip
# within one version; pymongo only talks to the server.
PACKAGES: dict[str, int | None] = {"hyperopt": None, "cloudpickle": None, "pymongo": 1}
PYTHON_PARTS = 2  # code objects cloudpickle ships are tied to the Python minor version


class WorkerCheckError(PyhoptclusterError):
    """The worker hosts' runtime does not match the driver's, or lacks a required package."""

    def __init__(self, message: str, problems: Sequence[str]) -> None:
        super().__init__(message)
        self.problems = list(problems)


class WorkerCheckWarning(UserWarning):
    """``start()`` found the worker hosts' runtime different from the driver's."""


@dataclasses.dataclass(frozen=True)
class HostCheck:
    """One host's runtime: the driver's, or a worker venv's as its report says."""

    host: str
    python: str | None
    packages: dict[str, str | None]
    missing: dict[str, str] = dataclasses.field(default_factory=dict)  # import name -> error
    error: str | None = None  # the report itself failed (no venv, host unreachable)

    @classmethod
    def from_report(cls, host: str, report: Any) -> HostCheck:
        if not isinstance(report, Mapping):
            return cls(host, None, {}, error=f"no report ({report!r})")
        if report.get("error"):
            return cls(host, None, {}, error=str(report["error"]))
        packages = report.get("packages") or {}
        return cls(
            host=host,
            python=str(report.get("python") or "") or None,
            packages={str(k): (None if v is None else str(v)) for k, v in packages.items()},
            missing={str(k): str(v) for k, v in (report.get("missing") or {}).items()},
        )


def driver_runtime() -> HostCheck:
    """The Python running the facade (and usually fmin)."""
    packages: dict[str, str | None] = {}
    for dist in PACKAGES:
        try:
            packages[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            packages[dist] = None
    return HostCheck("driver", platform.python_version(), packages)


def _head(version: str | None, parts: int | None) -> tuple[str, ...] | None:
    if version is None:
        return None
    numbers = version.split("+")[0].split(".")
    return tuple(numbers if parts is None else numbers[:parts])


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """Every worker host's runtime next to the driver's, and the problems found (``[]``: fine)."""

    driver: HostCheck
    hosts: dict[str, HostCheck]
    require: list[str]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_for_problems(self) -> None:
        if self.problems:
            raise WorkerCheckError(self.summary(), self.problems)

    def summary(self) -> str:
        if not self.problems:
            return f"worker runtime matches the driver's on {len(self.hosts)} host(s)"
        return (
            f"{len(self.problems)} problem(s) with the worker runtime: "
            + "; ".join(self.problems)
            + ". Fix the worker venv (hyperopt_worker_pip_packages, HyperoptCluster(worker_packages=...)) "
            "or the driver's environment so they agree"
        )

    def table(self) -> str:
        """A plain-text table: one row per host (the driver first), then the problems."""
        names = list(PACKAGES)
        rows = [["host", "python", *names, "missing"]]
        for check in (self.driver, *self.hosts.values()):
            if check.error:
                rows.append([check.host, f"error: {check.error}"])
                continue
            rows.append(
                [
                    check.host,
                    check.python or "-",
                    *[check.packages.get(n) or "-" for n in names],
                    ", ".join(sorted(check.missing)) or "-",
                ]
            )
        width = [max(len(r[i]) for r in rows if i < len(r) and len(r) > 2) for i in range(len(rows[0]))]
        lines = []
        for r in rows:
            if len(r) == 2:
                lines.append(f"{r[0]:<{width[0]}}  {r[1]}")
            else:
                lines.append("  ".join(f"{c:<{w}}" for c, w in zip(r, width, strict=True)).rstrip())
        lines += ["", "ok" if self.ok else "problems:"] + [f"  {p}" for p in self.problems]
        return "\n".join(lines)


def compare(
    reports: Mapping[str, Any],
    require: Sequence[str] = (),
    expected_hosts: Sequence[str] = (),
    driver: HostCheck | None = None,
) -> CheckResult:
    """Compare each worker host's report (from ``playbooks/check.yml``) with ``driver`` (default:
    this Python). A host of ``expected_hosts`` without a report is a problem too."""
    driver = driver or driver_runtime()
    hosts = {str(h): HostCheck.from_report(str(h), r) for h, r in reports.items()}
    for host in expected_hosts:
        if str(host) not in hosts:
            hosts[str(host)] = HostCheck(str(host), None, {}, error="no report: the host did not answer")
    problems: list[str] = []
    for host, check in hosts.items():
        if check.error:
            problems.append(f"{host}: {check.error}")
            continue
        if _head(check.python, PYTHON_PARTS) != _head(driver.python, PYTHON_PARTS):
            problems.append(
                f"{host}: Python {check.python} on the worker, {driver.python} on the driver "
                "(objectives pickled by cloudpickle need the same Python minor version)"
            )
        for dist, parts in PACKAGES.items():
            theirs, ours = check.packages.get(dist), driver.packages.get(dist)
            if theirs is None:
                problems.append(f"{host}: {dist} is not installed in the worker venv")
            elif ours is not None and _head(theirs, parts) != _head(ours, parts):
                scope = "version" if parts is None else "major version"
                problems.append(
                    f"{host}: {dist} {theirs} on the worker, {ours} on the driver (same {scope} needed)"
                )
        for name, error in sorted(check.missing.items()):
            problems.append(f"{host}: cannot import {name} in the worker venv ({error})")
    return CheckResult(driver, hosts, [str(r) for r in require], problems)
