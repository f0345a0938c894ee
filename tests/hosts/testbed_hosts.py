"""Bringing a test bed (testbed.py) up: class Testbed prepares an overlay per host, the bridge, launches
each host's supervisor and waits until every host answers ssh. Status and `down`: testbed_state.py."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from testbed_base import build_base, ensure_control_tools, restore_base
from testbed_info import HostInfo, TestbedInfo, inventory_yaml
from testbed_state import _CHILDREN, FIRST_HOST_OCTET, TestbedState
from testbed_sys import (
    POLL_INTERVAL,
    TestbedError,
    _cgroup_hierarchies,
    _flock,
    _proc_start_time,
    _rmtree,
    _run,
    _tail,
    _tcp_open,
    _write,
)

KEYGEN = ("ssh-keygen", "-q", "-t", "ed25519", "-N", "")
# The CLI: each host's supervisor runs as `sys.executable testbed.py _supervise ...`.
SCRIPT = Path(__file__).resolve().with_name("testbed.py")


class Testbed(TestbedState):
    """N systemd-nspawn hosts named <name>-1..N on bridge br-<name>, addresses <subnet>.11, .12, ..."""

    __test__ = False

    # -- up -----------------------------------------------------------------------------------------

    def up(self, timeout: float = 180.0, *, recreate: bool = False, rebuild: bool = False) -> TestbedInfo:
        """Bring the hosts up and wait until each answers ssh. Idempotent: a healthy test bed with the
        same shape is left as it is; anything else of this name (stale or different) is torn down first."""
        with _flock(self.lock_path):
            current = self.info()
            if (
                not recreate
                and not rebuild
                and current
                and current.subnet == self.subnet
                and len(current.hosts) == self.count
                and self.healthy(current)
            ):
                self.log(f"{self.name}: already up ({', '.join(current.ips)})")
                return current
            self._check_not_held(current, "recreating it" if recreate else "replacing it")
            ensure_control_tools()
            hierarchies = _cgroup_hierarchies()
            self._down_locked(timeout=60.0)
            try:
                return self._up_locked(timeout, rebuild, hierarchies)
            except BaseException:
                self.log(f"{self.name}: up failed, tearing down what was started")
                with contextlib.suppress(Exception):
                    self._down_locked(timeout=60.0, keep_logs=True)
                raise

    def _up_locked(self, timeout: float, rebuild: bool, hierarchies: list[Path]) -> TestbedInfo:
        t0 = time.monotonic()
        if build_base(self.cache, mirror=self.mirror, rebuild=rebuild):
            self.timings["build"] = time.monotonic() - t0
        self._check_subnet_free()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        if not self.key_path.exists():
            _run([*KEYGEN, "-C", f"testbed-{self.name}", "-f", str(self.key_path)])
        t1 = time.monotonic()
        self.lower, extracted = restore_base(self.cache)
        if extracted:
            self.timings["restore"] = time.monotonic() - t1
            self.log(f"{self.name}: base restored from {self.cache} in {self.timings['restore']:.1f} s")

        t2 = time.monotonic()
        hosts = [
            HostInfo(f"{self.name}-{n}", f"{self.subnet}.{FIRST_HOST_OCTET + n - 1}")
            for n in range(1, self.count + 1)
        ]
        info = TestbedInfo(
            name=self.name,
            subnet=self.subnet,
            bridge=self.bridge,
            bridge_ip=self.bridge_ip,
            hosts=hosts,
            key_path=self.key_path,
            inventory_path=self.inventory_path,
            state_dir=self.dir,
            owner_pid=os.getpid(),
            owner_start=_proc_start_time(os.getpid()),
        )
        self._save(info)  # recorded before anything starts, so a crash from here on leaves a trail for `down`
        _run(["ip", "link", "add", "name", self.bridge, "type", "bridge"])
        _run(["ip", "addr", "add", f"{self.bridge_ip}/24", "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])
        pubkey = self.key_path.with_suffix(".pub").read_text()
        for h in hosts:
            self._prepare_host(h, hosts, pubkey)
        for h in hosts:
            self._launch(h, hierarchies)
            self._save(info)
        self._event(f"up: launched {', '.join(h.name for h in hosts)}")
        self.log(f"{self.name}: {len(hosts)} hosts launched, waiting for ssh")
        self._wait_ready(info, time.monotonic() + timeout)
        self.timings["boot"] = time.monotonic() - t2
        self._save(info)
        _write(self.inventory_path, inventory_yaml(info))
        states = ", ".join(f"{h.name}={h.system_state}" for h in hosts)
        self.log(f"{self.name}: {len(hosts)} hosts answer ssh after {self.timings['boot']:.1f} s ({states})")
        return info

    def _check_subnet_free(self) -> None:
        net = ipaddress.ip_network(f"{self.subnet}.0/24")
        out = _run(["ip", "-o", "-4", "addr", "show"]).stdout
        for line in out.splitlines():
            parts = line.split()
            dev, addr = parts[1], ipaddress.ip_interface(parts[3])
            if dev != self.bridge and addr.network.overlaps(net):
                raise TestbedError(
                    f"{net} is already in use on {dev} ({addr}); pick another --subnet"
                    " (or `down` the test bed that uses it)"
                )

    def _prepare_host(self, h: HostInfo, hosts: list[HostInfo], pubkey: str) -> None:
        d = self._host_dir(h.name)
        _rmtree(d)
        for sub in ("upper", "work", "root"):
            (d / sub).mkdir(parents=True)
        root = d / "root"
        layers = f"lowerdir={self.lower},upperdir={d / 'upper'},workdir={d / 'work'}"
        _run(["mount", "-t", "overlay", "overlay", "-o", layers, str(root)])
        (root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
        (root / "etc/hostname").write_text(h.name + "\n")
        peers = "".join(f"{p.ip}\t{p.name}\n" for p in hosts if p is not h)
        (root / "etc/hosts").write_text(
            f"127.0.0.1\tlocalhost\n127.0.1.1\t{h.name}\n{self.bridge_ip}\t{self.name}-control\n{peers}"
            "::1\tlocalhost ip6-localhost ip6-loopback\n"
        )
        _write(
            root / "etc/systemd/network/10-testbed-host0.network",
            f"# pyhoptcluster test bed {self.name}: static address, deliberately no gateway (no internet)\n"
            f"[Match]\nName=host0\n\n[Network]\nAddress={h.ip}/24\nDHCP=no\nLinkLocalAddressing=no\n"
            "IPv6AcceptRA=no\n",
        )
        hostkey = root / "etc/ssh/ssh_host_ed25519_key"
        for old in (root / "etc/ssh").glob("ssh_host_*"):
            old.unlink()
        _run([*KEYGEN, "-C", f"root@{h.name}", "-f", str(hostkey)])
        ssh_dir = root / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        _write(ssh_dir / "authorized_keys", pubkey, 0o600)

    def _launch(self, h: HostInfo, hierarchies: list[Path]) -> None:
        log = self._log_path(h.name)
        log.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable,
            str(SCRIPT),
            "_supervise",
            "--machine",
            h.name,
            "--root",
            str(self._host_dir(h.name) / "root"),
            "--bridge",
            self.bridge,
            "--cgroup",
            self._cgroup(h.name),
            *(f"--hierarchy={p}" for p in hierarchies),
        ]
        with open(log, "w") as fh:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                cwd="/",
            )
        _CHILDREN[proc.pid] = proc
        h.supervisor_pid = proc.pid
        h.supervisor_start = _proc_start_time(proc.pid)

    def _wait_ready(self, info: TestbedInfo, deadline: float) -> None:
        errors: dict[str, str] = {}

        def wait_one(h: HostInfo) -> None:
            last = "no answer on port 22"
            while True:
                if not h.alive:
                    errors[h.name] = "its systemd-nspawn supervisor exited"
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    errors[h.name] = f"not ready before the deadline ({last})"
                    return
                if _tcp_open(h.ip, 22, min(1.0, remaining)):
                    try:
                        p = info.ssh(h, "systemctl is-system-running --wait", timeout=max(remaining, 1))
                    except subprocess.TimeoutExpired:
                        p = None
                    state = p.stdout.strip() if p else ""
                    if state in ("running", "degraded"):
                        h.system_state = state
                        return
                    last = f"ssh: exit {p.returncode} {(p.stdout + p.stderr).strip()!r}" if p else "ssh hung"
                time.sleep(POLL_INTERVAL)

        threads = [threading.Thread(target=wait_one, args=(h,), daemon=True) for h in info.hosts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            parts = [
                f"host {name} ({next(h.ip for h in info.hosts if h.name == name)}) never came up: {why}\n"
                f"--- last lines of {self._log_path(name)} ---\n{_tail(self._log_path(name))}"
                for name, why in sorted(errors.items())
            ]
            raise TestbedError("\n".join(parts))
        for h in info.hosts:
            if h.system_state == "degraded":
                failed = info.ssh(h, "systemctl --failed --no-legend --plain").stdout.strip()
                self.log(f"{h.name}: systemd is degraded, failed units: {failed or '?'}")
