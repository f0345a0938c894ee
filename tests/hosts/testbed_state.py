"""A test bed by name (testbed.py): its paths, its recorded state (state.json, the owner) and what works
from that record alone: status and `down`, also of a half-dead test bed. testbed_hosts.Testbed adds `up`."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from testbed_base import default_cache_path
from testbed_info import TestbedInfo
from testbed_supervisor import STOP_GRACE
from testbed_sys import (
    POLL_INTERVAL,
    TestbedError,
    _alive,
    _cgroup_hierarchies,
    _cmdline,
    _flock,
    _kill_cgroup_tree,
    _link_exists,
    _log,
    _mounts_under,
    _rmtree,
    _run,
    _tcp_open,
    _umount,
    _write,
)

FIRST_HOST_OCTET = 11
CGROUP_PREFIX = "pyhoptcluster-testbed."
# Short enough that br-<name> and nspawn's host-side veth vb-<name>-<N> fit in 15 characters.
NAME_RE = re.compile(r"^[a-z](?:[a-z0-9-]{0,6}[a-z0-9])?$")


def default_state_root() -> Path:
    env = os.environ.get("PYHOPTCLUSTER_TESTBED_STATE")
    return Path(env).expanduser() if env else Path("/var/tmp/pyhoptcluster-testbed")


_CHILDREN: dict[int, subprocess.Popen] = {}  # supervisors started by this process (reaped on down)


class TestbedState:
    """A test bed's name, paths and recorded state, and what needs nothing more: status and `down`."""

    __test__ = False

    def __init__(
        self,
        name: str = "pyhopt",
        hosts: int = 3,
        subnet: str = "10.231.0",
        *,
        state_dir: Path | str | None = None,
        cache: Path | str | None = None,
        mirror: str | None = None,
        log: Callable[[str], None] = _log,
    ) -> None:
        if not NAME_RE.match(name):
            raise TestbedError(
                f"bad test bed name {name!r}: 1-8 lowercase letters, digits or '-', starting with a letter"
                " (it becomes the machine names <name>-N, the bridge br-<name> and veths vb-<name>-N)"
            )
        try:
            net = ipaddress.ip_network(f"{subnet}.0/24")
        except ValueError as exc:
            raise TestbedError(f"bad --subnet {subnet!r}: give three octets, e.g. 10.231.0") from exc
        if not net.is_private:
            raise TestbedError(f"--subnet {subnet} is not private; the hosts must stay off the internet")
        if not 1 <= hosts <= 254 - FIRST_HOST_OCTET:
            raise TestbedError(f"--hosts must be between 1 and {254 - FIRST_HOST_OCTET}")
        self.name = name
        self.count = hosts
        self.subnet = subnet
        self.bridge = f"br-{name}"[:15]
        self.bridge_ip = f"{subnet}.1"
        self.state_root = Path(state_dir).expanduser() if state_dir else default_state_root()
        self.dir = self.state_root / name
        self.cache = Path(cache).expanduser() if cache else default_cache_path()
        self.mirror = mirror
        self.log = log
        self.key_path = self.dir / "id_ed25519"
        self.inventory_path = self.dir / "inventory.yml"
        self.state_file = self.dir / "state.json"
        self.lower: Path | None = None  # the shared, extracted base (set by up)
        self.lock_path = self.state_root / f".{name}.lock"
        self.timings: dict[str, float] = {}

    # -- state ------------------------------------------------------------------------------------

    def info(self) -> TestbedInfo | None:
        """The recorded state of this test bed (also of a half-dead one), or None."""
        try:
            return TestbedInfo.from_json(json.loads(self.state_file.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _save(self, info: TestbedInfo) -> None:
        _write(self.state_file, json.dumps(info.to_json(), indent=2) + "\n", 0o600)

    def _event(self, what: str) -> None:
        """Append to logs/events.log who (pid, command line, parent) did what: the post-mortem of a test
        bed that went away under a running test."""

        line = (
            f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {what} -- by pid {os.getpid()} ({_cmdline(os.getpid())})"
            f", parent {os.getppid()} ({_cmdline(os.getppid())})\n"
        )
        with contextlib.suppress(OSError):
            (self.dir / "logs").mkdir(parents=True, exist_ok=True)
            with open(self.dir / "logs" / "events.log", "a") as fh:
                fh.write(line)

    def _check_not_held(self, info: TestbedInfo | None, action: str) -> None:
        """Refuse to tear down a test bed that another live process brought up and still uses (two test
        runs on one machine with the same test bed name would otherwise take each other's hosts away
        in the middle of a test)."""
        if not info or not info.owner_pid or info.owner_pid == os.getpid():
            return
        if not _alive(info.owner_pid, info.owner_start):
            return
        raise TestbedError(
            f"test bed {self.name!r} is in use by pid {info.owner_pid} ({_cmdline(info.owner_pid)}), which"
            f" brought it up; {action} would take its hosts away under it. Wait for that process to end,"
            " stop it, or use another test bed name (--name, PYHOPTCLUSTER_TESTBED_NAME); "
            "`testbed.py down --force` tears it down anyway."
        )

    def _cgroup(self, machine: str | None = None) -> str:
        return CGROUP_PREFIX + self.name + (f"/{machine}" if machine else "")

    def _host_dir(self, machine: str) -> Path:
        return self.dir / "hosts" / machine

    def _log_path(self, machine: str) -> Path:
        return self.dir / "logs" / f"{machine}.log"

    def healthy(self, info: TestbedInfo | None = None) -> bool:
        info = info or self.info()
        return bool(
            info
            and info.hosts
            and _link_exists(info.bridge)
            and all(h.alive and _tcp_open(h.ip, 22, 1.0) for h in info.hosts)
        )

    # -- freeze / thaw: a host that stops answering (and comes back) ---------------------------------

    def _freeze_file(self, host: str) -> Path:
        """``cgroup.freeze`` of a host's cgroup (by name or IP) in the unified hierarchy, where its
        supervisor, nspawn and everything inside the host live."""
        info = self.info()
        found = [h for h in (info.hosts if info else []) if host in (h.name, h.ip)]
        if not found:
            names = ", ".join(f"{h.name} ({h.ip})" for h in info.hosts) if info else "none: it is not up"
            raise TestbedError(f"test bed {self.name!r} has no host {host!r}; its hosts: {names}")
        root = Path("/sys/fs/cgroup")
        unified = root if (root / "cgroup.controllers").exists() else root / "unified"
        path = unified / self._cgroup(found[0].name) / "cgroup.freeze"
        if not path.exists():
            raise TestbedError(
                f"cannot freeze {found[0].name}: {path} is missing (freezing needs the cgroup v2 freezer,"
                " Linux >= 5.2, and the host up)"
            )
        return path

    def frozen(self, host: str) -> bool:
        """True while the host's cgroup is frozen (``cgroup.events``: ``frozen 1``)."""
        events = self._freeze_file(host).with_name("cgroup.events").read_text().split()
        return events[events.index("frozen") + 1] == "1"

    def freeze(self, host: str, timeout: float = 10.0) -> None:
        """Freeze every process of a host (a host that stops answering: ssh and its services hang, its
        TCP connections stay open) until :meth:`thaw`. Returns once the kernel reports it frozen."""
        self._set_frozen(host, True, timeout)

    def thaw(self, host: str, timeout: float = 10.0) -> None:
        """Undo :meth:`freeze`; the host's processes go on where they stopped."""
        self._set_frozen(host, False, timeout)

    def _set_frozen(self, host: str, frozen: bool, timeout: float) -> None:
        path = self._freeze_file(host)
        path.write_text("1" if frozen else "0")
        self._event(f"{'freeze' if frozen else 'thaw'} {host}")
        deadline = time.monotonic() + timeout
        while self.frozen(host) != frozen:
            if time.monotonic() > deadline:
                what = "frozen" if frozen else "thawed"
                raise TestbedError(f"{host} not {what} after {timeout} s ({path})")
            time.sleep(POLL_INTERVAL / 4)

    def _thaw_all(self) -> None:
        """Thaw whatever of this test bed is frozen, so its hosts can power off in `down`."""
        for hier in _cgroup_hierarchies() if Path("/sys/fs/cgroup").exists() else []:
            for freeze in (hier / self._cgroup()).glob("*/cgroup.freeze"):
                with contextlib.suppress(OSError):
                    if freeze.read_text().strip() == "1":
                        freeze.write_text("0")

    # -- down ---------------------------------------------------------------------------------------

    def down(self, timeout: float = 60.0, *, force: bool = False) -> None:
        """Stop every host by its recorded PID, kill what is left in its cgroups, unmount, delete the
        bridge and the state. Safe on a half-dead test bed and when nothing is up. A test bed that another
        live process brought up is left alone (TestbedError) unless ``force``."""
        with _flock(self.lock_path):
            if not force:
                self._check_not_held(self.info(), "`down`")
            self._down_locked(timeout)

    def _down_locked(self, timeout: float, keep_logs: bool = True) -> None:
        t0 = time.monotonic()
        deadline = t0 + timeout
        info = self.info()
        did_something = False
        hosts = info.hosts if info else []
        if any(h.alive for h in hosts):
            self._event(f"down: stopping {', '.join(h.name for h in hosts if h.alive)}")
        self._thaw_all()  # a frozen host would sit out its poweroff (and the SIGTERM of its supervisor)
        # 1. polite: SIGTERM each supervisor (it forwards to nspawn -> orderly poweroff inside)
        for h in hosts:
            if h.alive:
                did_something = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(h.supervisor_pid, signal.SIGTERM)
        polite_deadline = min(deadline, time.monotonic() + STOP_GRACE + 3)
        for h in hosts:
            while h.alive and time.monotonic() < polite_deadline:
                self._reap(h.supervisor_pid)
                time.sleep(POLL_INTERVAL / 4)
            if h.alive:
                self.log(f"{h.name}: supervisor {h.supervisor_pid} ignored SIGTERM, killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(h.supervisor_pid, signal.SIGKILL)
            self._reap(h.supervisor_pid)
        # 2. whatever survived (e.g. nspawn orphaned by a kill -9 of its supervisor) dies with its cgroup
        hierarchies = _cgroup_hierarchies() if Path("/sys/fs/cgroup").exists() else []
        for hier in sorted(hierarchies, key=lambda h: not (h / "cgroup.kill").exists()):
            tree = hier / self._cgroup()
            if tree.exists():
                did_something = True
                _kill_cgroup_tree(tree, deadline)
        # 3. unmount the overlays (and anything else left mounted in our state dir)
        machines = {h.name for h in hosts} | (
            {p.name for p in (self.dir / "hosts").iterdir()} if (self.dir / "hosts").is_dir() else set()
        )
        for m in sorted(machines):
            self._forget_nspawn_runtime(m)
        for mnt in _mounts_under(self.dir):
            did_something = True
            _umount(mnt, deadline)
        # 4. the bridge (the veths went away with the containers' network namespaces)
        for br in {self.bridge, info.bridge if info else self.bridge}:
            if _link_exists(br):
                did_something = True
                _run(["ip", "link", "del", br], check=False)
        # 5. the state (the test key and the logs stay for the next run / for post-mortems)
        _rmtree(self.dir / "hosts")
        _rmtree(self.dir / "lower")  # per-test-bed lower layer of earlier versions of this script
        for p in (self.state_file, self.inventory_path):
            p.unlink(missing_ok=True)
        if not keep_logs:
            _rmtree(self.dir / "logs")
        if did_something:
            self.timings["teardown"] = time.monotonic() - t0
            self.log(f"{self.name}: down in {self.timings['teardown']:.1f} s")

    def _forget_nspawn_runtime(self, machine: str) -> None:
        """nspawn killed with SIGKILL leaves its per-machine runtime dir and image lock behind."""
        root = self._host_dir(machine) / "root"
        if _mounts_under(root):
            with contextlib.suppress(OSError):
                st = os.stat(root)
                Path(f"/run/systemd/nspawn/locks/inode-{st.st_dev}:{st.st_ino}").unlink(missing_ok=True)
        prop = Path("/run/systemd/nspawn/propagate") / machine
        if prop.exists() and not _mounts_under(prop):
            with contextlib.suppress(OSError):
                shutil.rmtree(prop)

    @staticmethod
    def _reap(pid: int | None) -> None:
        proc = _CHILDREN.get(pid) if pid else None
        if proc is not None and proc.poll() is not None:
            _CHILDREN.pop(pid, None)

    def _is_frozen_quietly(self, host: str) -> bool:
        try:
            return self.frozen(host)
        except (TestbedError, OSError, ValueError):
            return False

    # -- status ------------------------------------------------------------------------------------

    def status(self) -> dict:
        info = self.info()
        if info is None:
            return {"name": self.name, "up": False, "hosts": []}
        hosts = []
        for h in info.hosts:
            alive = h.alive
            hosts.append(
                {
                    "name": h.name,
                    "ip": h.ip,
                    # instance, address, user, port, identity_file: the keys of Molecule's instance_config
                    "instance": h.name,
                    "address": h.ip,
                    "supervisor_pid": h.supervisor_pid,
                    "alive": alive,
                    "ssh": alive and _tcp_open(h.ip, 22, 1.0),
                    "frozen": alive and self._is_frozen_quietly(h.name),
                    "user": "root",
                    "port": 22,
                    "identity_file": str(info.key_path),
                }
            )
        return {
            "name": info.name,
            "up": all(h["ssh"] for h in hosts) and _link_exists(info.bridge),
            "bridge": info.bridge,
            "bridge_ip": info.bridge_ip,
            "subnet": info.subnet,
            "key_path": str(info.key_path),
            "inventory_path": str(info.inventory_path),
            "state_dir": str(info.state_dir),
            "hosts": hosts,
        }
