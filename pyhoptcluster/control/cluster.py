"""``HyperoptCluster``: the one entry point for notebooks and scripts."""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

from pyhoptcluster.control import drain as _drain
from pyhoptcluster.control import experiments as _experiments
from pyhoptcluster.control import logs as _logs
from pyhoptcluster.control.check import CheckResult, WorkerCheckWarning, compare
from pyhoptcluster.control.inventory import InventorySpec
from pyhoptcluster.control.launchers import (
    LocalMongoLauncher,
    MasterLauncher,
    RoundRobinLauncher,
    WorkerLauncher,
    default_pip_packages,
    read_info,
    rotate_both,
    start_both,
    stop_both,
    worker_check,
)
from pyhoptcluster.control.state import JOBS_COLLECTION, ClusterInfo
from pyhoptcluster.control.status import ClusterStatus
from pyhoptcluster.errors import ClusterNotStartedError
from pyhoptcluster.validation import check_dbname, check_poll_interval, check_worker_count

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class HyperoptCluster:
    """A Hyperopt cluster: one MongoDB-protocol server on the control node and
    ``hyperopt-worker@<n>`` workers placed round-robin over the inventory's ``hyperopt_workers``.

    >>> cluster = HyperoptCluster("inventories/local")
    >>> cluster.start(worker_count=2)
    >>> trials = MongoTrials(cluster.mongo_trial_url, exp_key="exp1")
    """

    def __init__(
        self,
        inventory: InventorySpec,
        master_launcher: MasterLauncher | None = None,
        worker_launcher: WorkerLauncher | None = None,
        dbpath: str | Path | None = None,
        dbname: str = "hyperopt",
        worker_poll_intervall: float = 0.1,
        worker_packages: Sequence[str] | None = None,
        progress: bool = True,
        mongo_launcher: MasterLauncher | None = None,
    ) -> None:
        """``worker_packages``: pip requirements the objective needs on the workers (e.g.
        ``["scikit-learn==1.5"]``), installed into every worker venv besides hyperopt and pymongo
        (the role's ``hyperopt_worker_pip_packages``). ``progress``: show what a start or cleanup is
        doing (a live line in a terminal or notebook, plain lines elsewhere; pyhoptcluster.control.progress).
        ``mongo_launcher``: lazycluster's name of ``master_launcher``, accepted so old code keeps working."""
        if mongo_launcher is not None:
            if master_launcher is not None and master_launcher is not mongo_launcher:
                raise ValueError("pass master_launcher or its old name mongo_launcher, not both")
            master_launcher = mongo_launcher
        self._dbname = check_dbname(dbname)
        check_poll_interval(worker_poll_intervall)
        self._inventory = inventory
        self._master = master_launcher or LocalMongoLauncher(inventory, dbpath=dbpath, dbname=dbname)
        extravars = {}
        if worker_packages:
            if isinstance(worker_packages, str):
                raise ValueError(f"worker_packages must be a list of requirements, got {worker_packages!r}")
            packages = default_pip_packages() + [str(p) for p in worker_packages]
            extravars["hyperopt_worker_pip_packages"] = packages
        self._workers = worker_launcher or RoundRobinLauncher(
            inventory, dbname=dbname, poll_interval=worker_poll_intervall, extravars=extravars
        )
        for launcher in (self._master, self._workers):
            launcher.quiet = not progress
        self._read_info: ClusterInfo | None = None
        self._progress = progress

    # -- lifecycle -------------------------------------------------------------------------------
    def start(
        self,
        worker_count: int | None = None,
        master_port: int | Sequence[int] | None = None,
        debug: bool = False,
    ) -> None:
        """Start the server, then the workers (default: one per worker host)."""
        if worker_count is not None:
            check_worker_count(worker_count)
        if isinstance(self._master, LocalMongoLauncher) and isinstance(self._workers, RoundRobinLauncher):
            start_both(self._master, self._workers, master_port, worker_count, timeout=None, debug=debug)
        else:
            self.start_master(master_port, debug=debug)
            self.start_workers(worker_count, debug=debug)
        self._warn_runtime_mismatch()

    def _warn_runtime_mismatch(self) -> None:
        """The runtime reports of the worker hosts this run installed on (nothing on a warm run)."""
        info = self._workers.info
        if info is None or not info.worker_checks:
            return
        result = compare(info.worker_checks)
        if not result.ok:
            warnings.warn(f"{result.summary()} (see cluster.check())", WorkerCheckWarning, stacklevel=3)

    def start_master(
        self,
        master_port: int | Sequence[int] | None = None,
        timeout: float | None = None,
        debug: bool = False,
    ) -> None:
        """Start (or re-converge) the server. A single port must be free (``PortInUseError``), a list
        means the first free one (``NoPortsLeftError``), None means 27017 then a range."""
        self._master.start(master_port, timeout=timeout, debug=debug)

    def start_workers(self, count: int | None = None, debug: bool = False) -> None:
        """Start ``count`` workers round-robin (None: one per worker host); a smaller count than
        before stops the surplus ones."""
        if self._master.port is None:
            raise ClusterNotStartedError("start the master first: call start() or start_master()")
        self._workers.start(count, self._master.port, debug=debug)

    def scale(self, count: int, debug: bool = False) -> dict[str, list[int]]:
        """Run ``count`` workers on the running cluster: new instances are added, surplus ones stopped
        (their running trials handed back); the others keep running untouched. Returns the placement."""
        check_worker_count(count)
        self._workers.start(count, None, debug=debug)
        return self.workers_per_host

    def cleanup(self) -> None:
        """Stop every worker, then the server. Data and the generated password are kept."""
        if isinstance(self._master, LocalMongoLauncher) and isinstance(self._workers, RoundRobinLauncher):
            stop_both(self._master, self._workers)
            return
        try:
            self._workers.cleanup()
        finally:
            self._master.cleanup()

    def rotate_password(self, debug: bool = False) -> None:
        """Give the experiment user a new generated password (``playbooks/rotate.yml``): every worker
        config gets it and running workers restart (their running trials go back to the queue first),
        then the server's user is updated and the server restarts. No trial is lost; an ``fmin`` whose
        ``MongoTrials`` got its URL from :attr:`mongo_trial_url` re-reads the password file and goes
        on. Ports, worker counts and data are kept. Built-in launchers only."""
        master, workers = self._master, self._workers
        if not (isinstance(master, LocalMongoLauncher) and isinstance(workers, RoundRobinLauncher)):
            raise TypeError(
                "rotate_password() needs the built-in launchers (LocalMongoLauncher, RoundRobinLauncher)"
            )
        rotate_both(master, workers, debug=debug)
        self._read_info = None

    def print_log(self) -> None:
        """Print the output of every playbook run made for this cluster (secrets are never in it);
        colour codes only when printing to a terminal."""
        plain = not sys.stdout.isatty()
        for launcher in (self._master, self._workers):
            text = launcher.log()
            if text:
                print(_ANSI.sub("", text) if plain else text)

    # -- operations ------------------------------------------------------------------------------
    def logs(
        self,
        host: str | None = None,
        instance: int | None = None,
        since: str | float | None = None,
        lines: int = _logs.DEFAULT_LINES,
    ) -> list[_logs.LogLine]:
        """The server's and every worker's recent log lines (at most ``lines`` per log), merged
        oldest first, each tagged with its inventory host and ``server`` / ``worker[N]``; only
        ``host``'s, only worker ``instance``'s, only those since ``since`` (``"10m"``, ``"2h"``, a
        date and time, epoch seconds). From the journal on systemd hosts, the log files elsewhere.
        Read-only (``playbooks/logs.yml``)."""
        return _logs.read_logs(
            self._inventory, self._playbook_vars(), host=host, instance=instance, since=since, lines=lines
        )

    def follow_logs(
        self,
        host: str | None = None,
        instance: int | None = None,
        since: str | float | None = None,
        lines: int = _logs.DEFAULT_LINES,
        interval: float = _logs.FOLLOW_INTERVAL,
    ) -> Iterator[_logs.LogLine]:
        """:meth:`logs`, then every new line as it appears (read again every ``interval`` s), until
        the caller stops iterating (Ctrl-C)."""

        def read(start: float | None) -> list[_logs.LogLine]:
            return self.logs(host=host, instance=instance, since=start, lines=lines)

        return _logs.follow(read, _logs.parse_since(since), interval)

    def _playbook_vars(self) -> dict[str, object]:
        return {**self._master.playbook_vars(), **self._workers.playbook_vars()}

    def check(self, require: Sequence[str] = ()) -> CheckResult:
        """Python, hyperopt, cloudpickle and pymongo on every worker host against this Python's, and
        every package of ``require`` (import names, e.g. ``["sklearn"]``) importable in the worker
        venvs. Read-only (``playbooks/check.yml``); ``result.raise_for_problems()`` raises
        ``WorkerCheckError`` naming each problem by host."""
        return worker_check(self._inventory, require, self._workers.playbook_vars())

    def status(self) -> ClusterStatus:
        """What runs, read from the database (no ssh round per question): the server (address, up,
        version, uptime, data size), every placed worker (state, pid, uptime, restarts, current trial,
        trials done, last heartbeat, GPU) and every experiment (trials by state, stale, best loss,
        trials/min). Attaches to a running cluster this object did not start."""
        return _experiments.cluster_status(self.attach())

    def experiments(self) -> list[_experiments.ExperimentStatus]:
        """Every experiment in the database: exp_key, trials by state, stale, best loss, trials/min."""
        return _experiments.list_experiments(self.attach())

    def count_trials(self, exp_key: str) -> int:
        """How many trials (any state) experiment ``exp_key`` has."""
        return _experiments.count_trials(self.attach(), exp_key)

    def delete_experiment(self, exp_key: str) -> int:
        """Delete every trial of ``exp_key`` and its attachments (hyperopt's ``MongoTrials.delete_all``);
        returns the number of trials deleted."""
        return _experiments.delete_experiment(self.attach(), exp_key)

    def drain(
        self, host: str | None = None, timeout: float | None = None, wait: bool = True
    ) -> _drain.DrainResult:
        """Let the running workers (of inventory host ``host`` only, if given) finish their running
        trials, reserve no new one and exit 0 (not restarted; ``start()``/``scale()`` start them again).
        Through the database, no ssh. Waits until each has ended, at most ``timeout`` s (None: no limit;
        ``wait=False``: only ask). ``ValueError`` for a host that runs no workers of this cluster."""
        return _drain.drain(self.attach(), host=host, timeout=timeout, wait=wait, progress=self._progress)

    def __enter__(self) -> HyperoptCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    # -- seeing an experiment (pyhoptcluster[report]) ----------------------------------------------
    def attach(self, debug: bool = False) -> ClusterInfo:
        """The running cluster's connection facts without starting or changing anything: what this
        object's last ``start()`` published, else what the server role recorded on the control node
        at its last start (``playbooks/info.yml``, read-only; cached). So a fresh
        ``HyperoptCluster(inventory)`` — a restarted notebook kernel — has ``mongo_trial_url`` of the
        running cluster. The server may be stopped (:meth:`report` then says what to do);
        ``ClusterNotStartedError`` when it was never started with this inventory."""
        info = self._workers.info or self._master.info
        if info is not None:
            return info
        if not isinstance(self._master, LocalMongoLauncher):
            raise ClusterNotStartedError("call start() or start_master() first (custom master launcher)")
        if self._read_info is None:
            self._read_info = read_info(self._inventory, self._master.playbook_vars())
        return self._read_info

    def report(
        self,
        exp_key: str,
        path: str | Path,
        png_dir: str | Path | None = None,
        start_server: bool = False,
    ) -> Path:
        """Write the HTML report of experiment ``exp_key`` to ``path`` (one self-contained file;
        ``png_dir``: also one PNG per figure). Needs ``pip install 'pyhoptcluster[report]'``.

        A stopped server raises ``ClusterNotStartedError`` saying what to do; with
        ``start_server=True`` the server alone is started for the report (no workers) and stopped
        again afterwards if it was not running before."""
        from pyhoptcluster.control.report import ServerNotRunningError, Source, write_report

        inv = self._inventory if isinstance(self._inventory, str | Path) else "INVENTORY"
        hint = (
            f"the cluster is stopped: run `pyhoptcluster up -i {inv}` first, or make the report with "
            "--start-server (report(..., start_server=True)): it starts the server alone, then stops it"
        )
        info = self.attach()
        started_here = False
        try:
            with Source.from_info(info, hint=hint) as source:
                try:
                    source.check()
                except ServerNotRunningError:
                    if not start_server:
                        raise
                    self.start_master(info.server_port, timeout=30)
                    started_here = True
            with Source.from_info(self.info if started_here else info, hint=hint) as source:
                return write_report(source, exp_key, path, png_dir).path
        finally:
            if started_here:
                self._master.cleanup()

    # -- what the playbooks published --------------------------------------------------------------
    @property
    def info(self) -> ClusterInfo:
        """Everything the last run published (server address, port, workers per host, ...)."""
        info = self._workers.info or self._master.info
        if info is None:
            raise ClusterNotStartedError("the cluster is not started: call start() or start_master() first")
        return info

    @property
    def master_port(self) -> int | None:
        return self._master.port

    @property
    def mongo_url(self) -> str:
        """``mongo://user:password@host:port/dbname`` (the password is needed by MongoTrials); of the
        running cluster even when this object did not start it (:meth:`attach`)."""
        return self.attach().mongo_url()

    @property
    def mongo_trial_url(self) -> str:
        """``mongo://user:password@host:port/dbname/jobs``: pass it to ``MongoTrials`` (attaches to the
        running cluster when this object did not start it)."""
        return self.attach().mongo_url(collection=JOBS_COLLECTION)

    @property
    def workers_per_host(self) -> dict[str, list[int]]:
        """Worker instance ids per inventory host, as placed by the worker role."""
        info = self._workers.info
        return dict(info.workers) if info else {}

    @property
    def dbname(self) -> str:
        return self._dbname

    @property
    def inventory(self) -> InventorySpec:
        return self._inventory

    def __repr__(self) -> str:
        try:
            where = self.info.mongo_url(with_password=False)
        except ClusterNotStartedError:
            where = "not started"
        return f"HyperoptCluster({self._inventory!r}, {where})"
