"""Strategies that start the server and the workers, each by running the project's playbooks.

``MasterLauncher`` and ``WorkerLauncher`` are the interfaces for custom strategies (lazycluster's
seed API); ``LocalMongoLauncher`` and ``RoundRobinLauncher`` are the defaults. Neither re-implements
a role: they choose extra vars and tags, run ``playbooks/site.yml`` or ``playbooks/stop.yml``, and
read the published result.
"""

from __future__ import annotations

import abc
import dataclasses
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pyhoptcluster.control import attach_cache, progress, runner
from pyhoptcluster.control.check import STATS_KEY as CHECK_STATS_KEY
from pyhoptcluster.control.check import CheckResult, HostCheck, compare
from pyhoptcluster.control.inventory import InventorySpec, normalize
from pyhoptcluster.control.state import ClusterInfo
from pyhoptcluster.errors import ClusterNotStartedError, PlaybookError
from pyhoptcluster.validation import check_dbname, check_poll_interval, check_ports, check_worker_count

_TITLES = {
    "site.yml": "pyhoptcluster: starting the cluster",
    "stop.yml": "pyhoptcluster: stopping the cluster",
    "rotate.yml": "pyhoptcluster: rotating the database password",
}
MASTER_TAG = "hyperopt_mongodb"
WORKER_TAG = "hyperopt_worker"


class _PlaybookLauncher:
    """Shared plumbing: the normalised inventory, the runs made so far, the last published result."""

    def __init__(self, inventory: InventorySpec, extravars: Mapping[str, Any] | None = None) -> None:
        self._inventory = normalize(inventory)
        self._extravars: dict[str, Any] = dict(extravars or {})
        self.runs: list[runner.PlaybookRun] = []
        self.info: ClusterInfo | None = None
        self.quiet = False  # no progress display (HyperoptCluster(progress=False), --quiet)

    def _run(
        self, playbook: str, tags: str | None, extravars: Mapping[str, Any], debug: bool
    ) -> runner.PlaybookRun:
        title = _TITLES.get(playbook, f"pyhoptcluster: {playbook}")
        shown = progress.reporter(title, quiet=self.quiet or debug)
        run = runner.run_playbook(
            playbook,
            self._inventory,
            {**self._extravars, **extravars},
            tags=tags,
            debug=debug,
            progress=shown,
        )
        self.runs.append(run)
        run.raise_for_failure()
        return run

    def _publish(self, run: runner.PlaybookRun) -> ClusterInfo:
        self.info = ClusterInfo.from_stats(run.stats)
        attach_cache.remember(self._inventory, self._extravars, self.info)
        return self.info

    def _command(self, playbook: str, tags: str, extravars: Mapping[str, Any]) -> str:
        inv = self._inventory if isinstance(self._inventory, str) else "<inventory dict>"
        words = ["ansible-playbook", str(runner.ansible_dir() / "playbooks" / playbook), "-i", inv]
        words += ["--tags", tags]
        for key, value in {**self._extravars, **extravars}.items():
            words += ["-e", f"{key}={value}"]
        return shlex.join(words)

    def log(self) -> str:
        return "\n".join(f"=== {r.playbook} ({r.status}) ===\n{r.output}" for r in self.runs)

    def playbook_vars(self) -> dict[str, Any]:
        return dict(self._extravars)


class _LauncherFacts:
    """What the facade may ask of every launcher beyond start/cleanup; safe defaults for custom ones."""

    info: ClusterInfo | None = None  # what the last start published (None: not started here)
    quiet: bool = False  # no progress display

    def log(self) -> str:
        """The output of the runs made so far ('' when there is none to show)."""
        return ""

    def playbook_vars(self) -> dict[str, Any]:
        """Extra vars the facade's read-only playbooks (info, check, logs) should run with."""
        return {}


class MasterLauncher(_LauncherFacts, abc.ABC):
    """Starts and stops the one MongoDB-protocol server of a cluster."""

    @property
    @abc.abstractmethod
    def port(self) -> int | None:
        """The port the server listens on, None before start."""

    @abc.abstractmethod
    def start(
        self, ports: int | Sequence[int] | None, timeout: float | None = None, debug: bool = False
    ) -> list[int]:
        """Start the server on the first free port of ``ports``; return the ports left unused.
        ``timeout``: seconds the server may take to answer (None: the server role's default, 30)."""

    @abc.abstractmethod
    def cleanup(self) -> None:
        """Stop the server (data and credentials are kept)."""


class WorkerLauncher(_LauncherFacts, abc.ABC):
    """Starts and stops the hyperopt workers of a cluster."""

    @abc.abstractmethod
    def start(self, worker_count: int | None, master_port: int | None, debug: bool = False) -> None:
        """Start ``worker_count`` workers (None: one per worker host) against the server."""

    @abc.abstractmethod
    def cleanup(self) -> None:
        """Stop every worker on every worker host."""


class LocalMongoLauncher(_PlaybookLauncher, MasterLauncher):
    """The server on the host of the inventory group ``hyperopt_master`` (the control node unless the
    inventory names another host), via the ``hyperopt_mongodb`` role. ``dbpath``: ``~`` is expanded
    on the server host; a relative path is taken from this process's directory."""

    def __init__(
        self,
        inventory: InventorySpec,
        dbpath: str | Path | None = None,
        dbname: str = "hyperopt",
        extravars: Mapping[str, Any] | None = None,
    ) -> None:
        check_dbname(dbname)
        base = {"hyperopt_mongodb_dbname": dbname, **dict(extravars or {})}
        if dbpath is not None:
            text = str(dbpath)
            base["hyperopt_mongodb_dbpath"] = text if text.startswith("~") else str(Path(text).absolute())
        super().__init__(inventory, base)

    @property
    def port(self) -> int | None:
        return self.info.server_port if self.info else None

    def _start_vars(self, ports: int | Sequence[int] | None, timeout: float | None) -> dict[str, Any]:
        extravars: dict[str, Any] = {}
        if timeout is not None:  # None: the role's default (hyperopt_mongodb_start_timeout)
            extravars["hyperopt_mongodb_start_timeout"] = float(timeout)
        if ports is not None:
            extravars["hyperopt_mongodb_port"] = check_ports(ports)
        return extravars

    def start(
        self, ports: int | Sequence[int] | None, timeout: float | None = None, debug: bool = False
    ) -> list[int]:
        run = self._run("site.yml", MASTER_TAG, self._start_vars(ports, timeout), debug)
        info = self._publish(run)
        if ports is None or isinstance(ports, int):
            return []
        return [p for p in ports if p != info.server_port]

    def get_mongod_start_cmd(self) -> str:
        """The command that starts (or re-converges) the server the way ``start()`` does."""
        return self._command("site.yml", MASTER_TAG, {})

    def get_mongod_stop_cmd(self) -> str:
        """The command that stops the server the way ``cleanup()`` does."""
        return self._command("stop.yml", MASTER_TAG, {})

    def cleanup(self) -> None:
        self._run("stop.yml", MASTER_TAG, {}, debug=False)
        self.info = None


class RoundRobinLauncher(_PlaybookLauncher, WorkerLauncher):
    """Workers as ``hyperopt-worker@<n>`` units (or supervisord programs), worker i on hosts[i % len(hosts)],
    via the ``hyperopt_worker`` role."""

    def __init__(
        self,
        inventory: InventorySpec,
        dbname: str = "hyperopt",
        poll_interval: float = 0.1,
        extravars: Mapping[str, Any] | None = None,
    ) -> None:
        check_dbname(dbname)
        self.dbname = dbname
        self.poll_interval = check_poll_interval(poll_interval)
        base = {
            "hyperopt_mongodb_dbname": dbname,
            "hyperopt_worker_poll_interval": self.poll_interval,
            **dict(extravars or {}),
        }
        super().__init__(inventory, base)

    def _start_vars(self, worker_count: int | None) -> dict[str, Any]:
        if worker_count is None:
            return {}
        return {"hyperopt_worker_count": check_worker_count(worker_count)}

    def start(self, worker_count: int | None, master_port: int | None = None, debug: bool = False) -> None:
        info = self._publish(self._run("site.yml", WORKER_TAG, self._start_vars(worker_count), debug))
        if master_port is not None and info.server_port != master_port:
            raise ClusterNotStartedError(
                f"the running server listens on port {info.server_port}, not {master_port}; "
                "start the master with that port first"
            )

    @property
    def workers_per_host(self) -> dict[str, list[int]]:
        return dict(self.info.workers) if self.info else {}

    def cleanup(self) -> None:
        self._run("stop.yml", WORKER_TAG, {}, debug=False)
        self.info = None


def start_both(
    master: LocalMongoLauncher,
    workers: RoundRobinLauncher,
    ports: int | Sequence[int] | None,
    worker_count: int | None,
    timeout: float | None,
    debug: bool,
) -> None:
    """Server and workers in ONE run of site.yml (what ``ansible-playbook site.yml`` does): half the
    Ansible start-up cost of starting them one after the other."""
    extravars = {
        **workers._extravars,
        **master._start_vars(ports, timeout),
        **workers._start_vars(worker_count),
    }
    run = master._run("site.yml", None, extravars, debug)
    workers.runs.append(run)
    workers.info = master._publish(run)


def rotate_both(master: LocalMongoLauncher, workers: RoundRobinLauncher, debug: bool) -> ClusterInfo:
    """A new experiment password in one run of ``rotate.yml``: the password file, then the workers'
    configs (running workers restart and hand their trials back), then the server's user (the server
    restarts). Ports, worker counts and data are kept."""
    run = master._run("rotate.yml", None, dict(workers._extravars), debug)
    workers.runs.append(run)
    workers.info = master._publish(run)
    return workers.info


def stop_both(master: LocalMongoLauncher, workers: RoundRobinLauncher) -> None:
    """Workers, then the server, in one run of stop.yml."""
    try:
        master._run("stop.yml", None, {}, debug=False)
    finally:
        master.info = workers.info = None


# -- read-only runs: what is running, and what the worker hosts have -----------------------------------


def read_info(inventory: InventorySpec, extravars: Mapping[str, Any] | None = None) -> ClusterInfo:
    """The running cluster's connection facts (server address, port, dbname, user, password file) from
    the server's state on the control node, without starting or changing anything: ``playbooks/
    info.yml`` loads them (``hyperopt_mongodb`` ``tasks_from: facts``) and publishes ``hyperopt_cluster``
    as ``site.yml`` does. ``workers`` is ``{}``: this run does not look at the worker hosts.
    ``ClusterNotStartedError`` when the server was never started with this inventory. A fresh
    process reuses what the last run found while that server answers (:mod:`.attach_cache`)."""
    spec, extra = normalize(inventory), dict(extravars or {})
    remembered = attach_cache.recall(spec, extra)  # where the last run found it, if it answers there
    if remembered is not None:
        return remembered
    run = runner.run_playbook("info.yml", spec, extra)
    run.raise_for_failure()
    info = ClusterInfo.from_stats(run.stats)
    attach_cache.remember(spec, extra, info)
    return info


def worker_check(
    inventory: InventorySpec, require: Sequence[str] = (), extravars: Mapping[str, Any] | None = None
) -> CheckResult:
    """Run ``playbooks/check.yml`` (read-only) and compare every worker host's runtime with this
    Python's; each host that does not answer is a problem too."""
    require = [str(r) for r in require]
    run = runner.run_playbook(
        "check.yml", normalize(inventory), {**dict(extravars or {}), "hyperopt_worker_require": require}
    )
    published = run.stats.get(CHECK_STATS_KEY)
    if not isinstance(published, Mapping):
        run.raise_for_failure()
        raise PlaybookError(f"check.yml published no '{CHECK_STATS_KEY}' result")
    hosts = published.get("hosts") or {}
    lost = {f.host: f for f in run.failures if f.host not in hosts}
    result = compare(hosts, require)
    problems = list(result.problems) + [str(f) for f in lost.values()]
    for host in lost:
        result.hosts[host] = HostCheck(host, None, {}, error=str(lost[host]))
    if not run.ok and not problems:
        run.raise_for_failure()
    return dataclasses.replace(result, problems=problems)


def default_pip_packages() -> list[str]:
    """``hyperopt_worker_pip_packages`` of the worker role's defaults (hyperopt, pymongo)."""
    import yaml  # control side: comes with ansible-core

    path = runner.ansible_dir() / "roles" / "hyperopt_worker" / "defaults" / "main.yml"
    return [str(p) for p in yaml.safe_load(path.read_text(encoding="utf-8"))["hyperopt_worker_pip_packages"]]
