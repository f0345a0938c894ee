"""What the multi-host tests share (test_multihost.py, test_multihost_faults.py): :class:`Multihost`,
the test bed's inventory with a server state dir of its own and the module's own ports, clusters on it,
ssh and the worker units of the hosts, and :func:`multihost_env`, the body of each module's ``mh``
fixture, which cleans up every cluster it was given and stops by pid file whatever a failed test left.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pyhoptcluster import HyperoptCluster
from pyhoptcluster.control.launchers import LocalMongoLauncher, RoundRobinLauncher


@dataclass
class Multihost:
    tb: object  # TestbedInfo
    tmp: Path
    base: dict
    secantusdb_venv: str
    ports: list[int]  # the server's candidate ports (each module its own range)
    timings: dict[str, float] = field(default_factory=dict)
    clusters: list[HyperoptCluster] = field(default_factory=list)

    @property
    def ips(self) -> list[str]:
        return [h.ip for h in self.tb.hosts]

    @property
    def hostnames(self) -> dict[str, str]:
        return {h.ip: h.name for h in self.tb.hosts}

    def inventory(self, name: str, server: str = "main", host_vars: dict | None = None, **all_vars) -> Path:
        """The test bed's inventory with its own server state dir, SecantusDB from the existing venv,
        and the given overrides (``host_vars`` may add hosts)."""
        inv = copy.deepcopy(self.base)
        group_vars = inv["all"]["vars"]
        group_vars.update(
            hyperopt_mongodb_state_dir=str(self.tmp / f"server-{server}"),
            hyperopt_mongodb_install_method="pip",
            hyperopt_mongodb_pip_venv=self.secantusdb_venv,
            hyperopt_mongodb_port=self.ports,
        )
        group_vars.update(all_vars)
        hosts = inv["all"]["children"]["hyperopt_workers"]["hosts"]
        for host, values in (host_vars or {}).items():
            hosts.setdefault(host, {}).update(values)
        path = self.tmp / f"{name}.yml"
        path.write_text(yaml.safe_dump(inv, sort_keys=False))
        return path

    def cluster(self, inventory: Path, cleanup: bool = False) -> tuple[HyperoptCluster, RoundRobinLauncher]:
        """A cluster on ``inventory``; with ``cleanup`` it is cleaned up at teardown (the fault tests'
        clusters share the main one's server and units, which the main one's cleanup stops)."""
        workers = RoundRobinLauncher(str(inventory))
        cluster = HyperoptCluster(
            str(inventory), master_launcher=LocalMongoLauncher(str(inventory)), worker_launcher=workers
        )
        if cleanup:
            self.clusters.append(cluster)
        return cluster, workers

    def testbed(self):
        """The test bed's ``Testbed`` (tests/hosts/testbed.py), for what TestbedInfo cannot do (freeze)."""
        return load_testbed().Testbed(self.tb.name, len(self.tb.hosts), self.tb.subnet)

    def ssh(self, host: str, command: str) -> str:
        proc = self.tb.ssh(host, command)
        assert proc.returncode == 0, f"{host}: {command}: {proc.stderr}"
        return proc.stdout

    @contextlib.contextmanager
    def hidden(self, host: str, path: str) -> Iterator[None]:
        """``path`` on ``host`` renamed away for the duration (a fault), always put back."""
        self.ssh(host, f"mv {path} {path}.hidden")
        try:
            yield
        finally:
            self.ssh(host, f"mv {path}.hidden {path}")

    def units(self, host: str, ids=range(1, 8)) -> dict[str, tuple[str, str, int]]:
        """unit -> (ActiveState, is-enabled, MainPID) of the target and hyperopt-worker@<ids>."""
        names = ["hyperopt-workers.target"] + [f"hyperopt-worker@{i}.service" for i in ids]
        script = "; ".join(
            f'echo "{u}|$(systemctl is-active {u})|$(systemctl is-enabled {u} 2>/dev/null)'
            f'|$(systemctl show -p MainPID --value {u})"'
            for u in names
        )
        result = {}
        for line in self.ssh(host, script).splitlines():
            unit, active, enabled, pid = line.split("|")
            result[unit] = (active, enabled, int(pid or 0))
        return result

    def running_on(self, host: str) -> dict[int, int]:
        """{instance id: MainPID} of the active worker units of ``host``."""
        return {
            int(unit.split("@")[1].split(".")[0]): pid
            for unit, (active, _, pid) in self.units(host).items()
            if unit.startswith("hyperopt-worker@") and active == "active"
        }

    def running(self) -> dict[str, dict[int, int]]:
        """host -> {instance id: MainPID} of the active worker units."""
        return {ip: self.running_on(ip) for ip in self.ips}


def load_testbed():
    """tests/hosts/testbed.py as a module (by path: tests/hosts is not a package), the instance that
    tests/hosts/fixtures.py (the ``testbed_hosts`` fixture) loads too."""
    name = "pyhoptcluster_testbed_fixtures"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).resolve().parents[1] / "hosts" / "fixtures.py"
        )
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name].testbed


def alive_with(pid: int, needle: str) -> bool:
    try:
        return needle in " ".join(cmdline(pid))
    except OSError:
        return False


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def children(pid: int) -> list[int]:
    """Live child processes of ``pid``."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            kids.append(int(stat.parent.name))
    return kids


def stop_leftovers(state_dir: Path) -> None:
    """Stop what a failed test may have left: the server's supervisord and its programs (by the pids
    that supervisord reports), and the ssh tunnels (by pid file)."""
    from local_cluster import Supervisor

    Supervisor(state_dir / "supervisor").kill()
    pidfiles = [(p, "ssh -N") for p in (state_dir / "tunnels").glob("tunnel-*.pid")]
    for pidfile, needle in pidfiles:
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            continue
        if alive_with(pid, needle):
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if not alive_with(pid, needle):
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)


def multihost_env(
    testbed_hosts, secantusd_binary: Path, tmp: Path, ports: list[int], label: str = "multihost"
) -> Iterator[Multihost]:
    """Body of a module's ``mh`` fixture: yields a :class:`Multihost`; at the end cleans up the clusters
    registered with ``cleanup=True``, stops leftovers by pid file and prints the recorded timings."""
    base = yaml.safe_load(Path(testbed_hosts.inventory_path).read_text())
    env = Multihost(testbed_hosts, tmp, base, str(Path(secantusd_binary).parent.parent), ports)
    try:
        yield env
    finally:
        for cluster in env.clusters:
            try:
                cluster.cleanup()
            except Exception as exc:  # keep tearing down; the test bed goes away anyway
                print(f"cleanup after the {label} tests: {exc}")
        for state_dir in tmp.glob("server-*"):
            stop_leftovers(state_dir)
        print(f"\n{label} timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in env.timings.items()))
