#!/usr/bin/env python3
"""Multi-host test bed: systemd-nspawn containers booting Debian bookworm, for pytest and Molecule.

Each host is a full systemd machine (PID 1 = systemd, sshd with key auth, its own IP on a private
bridge, no route to the internet) running on an overlayfs over one cached base rootfs.

    python3 tests/hosts/testbed.py up --hosts 3 [--name pyhopt] [--subnet 10.231.0]
    python3 tests/hosts/testbed.py status [--json]
    python3 tests/hosts/testbed.py inventory [--output PATH]
    python3 tests/hosts/testbed.py down
    python3 tests/hosts/testbed.py build [--rebuild]      # only build/refresh the cached base rootfs

As a module (stdlib only)::

    tb = Testbed(name="pyhopt", hosts=3)
    info = tb.up()            # -> TestbedInfo(inventory_path, key_path, hosts=[HostInfo(name, ip)], ...)
    ...
    tb.down()

The recipe (cgroups, nspawn flags, exit code 133, ...) is the one in DESIGN.md, "The multi-host test bed";
tests/hosts/README.md explains each step. Needs root and Linux with overlayfs, veth and bridges.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Everything a host needs must be in the base: the hosts have no route to the internet. A worker venv
# is later built offline from a wheelhouse that Ansible ships, so python3-venv/pip are enough for it.
BASE_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "python3-venv",
    "python3-pip",
    "iproute2",
    "sudo",
    "procps",
)
# Timers and services that only make noise (or disk I/O) in a short-lived test host.
MASKED_UNITS = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "getty@tty1.service",
)
# Bump when customize_base() changes: a cached base built by an older recipe is then rebuilt.
RECIPE_VERSION = 1

# Commands the control node needs -> the Debian package that ships them.
CONTROL_TOOLS = {
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "ip": "iproute2",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "tar": "tar",
    "mount": "mount",
}
NSPAWN_REBOOT_EXIT = 133  # systemd-nspawn's exit code when the container asked for a reboot
FIRST_HOST_OCTET = 11
CGROUP_PREFIX = "pyhoptcluster-testbed."
_SSH_CONFIG = (
    "StrictHostKeyChecking=no",
    "UserKnownHostsFile=/dev/null",
    "LogLevel=ERROR",
    "BatchMode=yes",
    "IdentitiesOnly=yes",
)
SSH_OPTIONS = tuple(arg for opt in _SSH_CONFIG for arg in ("-o", opt))
ANSIBLE_SSH_COMMON_ARGS = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
TAR_FLAGS = ("--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls")
KEYGEN = ("ssh-keygen", "-q", "-t", "ed25519", "-N", "")
STOP_GRACE = 10.0  # seconds a host gets for an orderly poweroff before its cgroup is killed
POLL_INTERVAL = 0.2  # seconds between readiness probes (always bounded by a deadline)
# Short enough that br-<name> and nspawn's host-side veth vb-<name>-<N> fit in 15 characters.
NAME_RE = re.compile(r"^[a-z](?:[a-z0-9-]{0,6}[a-z0-9])?$")


class TestbedError(RuntimeError):
    """The test bed could not be brought up or torn down; the message says what to do next."""

    __test__ = False  # not a pytest test class


# --------------------------------------------------------------------------------------------------
# small helpers


def _log(msg: str) -> None:
    print(f"testbed: {msg}", file=sys.stderr, flush=True)


def _run(
    cmd: list[str], *, check: bool = True, timeout: float | None = None, **kw
) -> subprocess.CompletedProcess:
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    kw.setdefault("text", True)
    kw.setdefault("stdin", subprocess.DEVNULL)
    proc = subprocess.run(cmd, timeout=timeout, check=False, **kw)
    if check and proc.returncode != 0:
        err = (proc.stderr or "").strip() if isinstance(proc.stderr, str) else ""
        raise TestbedError(f"command failed (exit {proc.returncode}): {' '.join(cmd)}\n{err}")
    return proc


def _tail(path: Path, lines: int = 30) -> str:
    try:
        data = path.read_bytes()[-16384:].decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(data.splitlines()[-lines:])


def _proc_start_time(pid: int) -> int | None:
    """Start time (clock ticks since boot) of a live, non-zombie process; None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _alive(pid: int | None, start_time: int | None) -> bool:
    """True only if `pid` is still the very process we recorded (guards against PID reuse)."""
    if not pid:
        return False
    now = _proc_start_time(pid)
    return now is not None and (start_time is None or now == start_time)


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return " ".join(raw.replace(b"\0", b" ").decode(errors="replace").split())[:300]


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    os.replace(tmp, path)


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _mounts_under(path: Path) -> list[Path]:
    """Mount points at or below `path`, deepest first."""
    prefix = str(path.resolve()) if path.exists() else str(path)
    found = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            mnt = line.split()[4].encode().decode("unicode_escape")
            if mnt == prefix or mnt.startswith(prefix + "/"):
                found.append(Path(mnt))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def _umount(path: Path, deadline: float) -> None:
    while True:
        proc = _run(["umount", str(path)], check=False)
        if proc.returncode == 0 or not _mounts_under(path):
            return
        if time.monotonic() > deadline:
            _log(f"{path} still busy, detaching it lazily: {proc.stderr.strip()}")
            _run(["umount", "-l", str(path)], check=False)
            return
        time.sleep(POLL_INTERVAL)


def _rmtree(path: Path) -> None:
    """rm -rf that refuses to descend into anything still mounted below `path`."""
    if not path.exists() and not path.is_symlink():
        return
    mounted = _mounts_under(path)
    if mounted:
        raise TestbedError(f"refusing to delete {path}: still mounted: {', '.join(map(str, mounted))}")
    shutil.rmtree(path)


def _link_exists(dev: str) -> bool:
    return Path("/sys/class/net", dev).exists()


def _cgroup_hierarchies() -> list[Path]:
    """The cgroup trees a launcher must move itself into (both, on a cgroup v1 hybrid machine)."""
    root = Path("/sys/fs/cgroup")
    if (root / "cgroup.controllers").exists():  # pure cgroup v2
        return [root]
    hier = [root / "systemd", root / "unified"]
    missing = [str(h) for h in hier if not (h / "cgroup.procs").exists()]
    if missing:
        raise TestbedError(
            f"cgroup hierarchy not mounted: {', '.join(missing)}; this test bed needs cgroup v2 or the"
            " v1 hybrid layout (name=systemd + unified)"
        )
    return hier


def _cgroup_pids(tree: Path) -> set[int]:
    pids: set[int] = set()
    for procs in tree.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            pids.update(int(x) for x in procs.read_text().split())
    return pids


def _kill_cgroup_tree(tree: Path, deadline: float) -> None:
    """SIGKILL every process in a cgroup tree we created, then remove the tree."""
    if not tree.exists():
        return
    kill_file = tree / "cgroup.kill"
    while True:
        pids = _cgroup_pids(tree)
        if not pids:
            break
        if kill_file.exists():
            with contextlib.suppress(OSError):
                kill_file.write_text("1")
        else:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise TestbedError(f"processes {sorted(pids)} in {tree} survive SIGKILL")
        time.sleep(POLL_INTERVAL / 4)
    dirs = sorted((p for p in tree.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
    for d in [*dirs, tree]:
        while True:
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as exc:  # EBUSY while the last exiting task is being reaped
                if time.monotonic() > deadline:
                    raise TestbedError(f"cannot remove cgroup {d}: {exc}") from exc
                time.sleep(POLL_INTERVAL / 4)


# --------------------------------------------------------------------------------------------------
# control node preparation and the cached base rootfs


def ensure_control_tools() -> None:
    """Install (apt) whatever the control node lacks; CI runs this on a fresh machine."""
    if os.geteuid() != 0:
        raise TestbedError("the test bed needs root (mounts, cgroups, bridges, systemd-nspawn)")
    missing = sorted({pkg for tool, pkg in CONTROL_TOOLS.items() if shutil.which(tool) is None})
    if not Path("/usr/share/keyrings/debian-archive-keyring.gpg").exists():
        missing.append("debian-archive-keyring")
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise TestbedError(f"missing packages {missing} and no apt-get to install them")
    _log(f"installing on the control node: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    if _run(cmd, check=False, env=env).returncode != 0:
        _run(["apt-get", "update", "-q"], env=env, timeout=600)
        _run(cmd, env=env, timeout=900)


def _apt_mirror() -> str:
    """The Debian mirror apt already uses on the control node (it is the one that is reachable)."""
    env = os.environ.get("PYHOPTCLUSTER_TESTBED_MIRROR")
    if env:
        return env
    texts = []
    for p in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if p.suffix in (".list", ".sources") and p.is_file():
            with contextlib.suppress(OSError):
                texts.append(p.read_text())
    for text in texts:
        for m in re.finditer(r"(https?://\S+?/debian)/?(?=\s)", text + "\n"):
            return m.group(1)
    return DEFAULT_MIRROR


def default_cache_path() -> Path:
    env = os.environ.get("PYHOPTCLUSTER_TESTBED_CACHE")
    if env:
        p = Path(env).expanduser()
        return p if p.suffix == ".tar" else p / f"{SUITE}-base.tar"
    return Path.home() / ".cache" / "pyhoptcluster" / "testbed" / f"{SUITE}-base.tar"


def default_state_root() -> Path:
    env = os.environ.get("PYHOPTCLUSTER_TESTBED_STATE")
    return Path(env).expanduser() if env else Path("/var/tmp/pyhoptcluster-testbed")


def recipe_id() -> str:
    blob = json.dumps([SUITE, BASE_PACKAGES, MASKED_UNITS, RECIPE_VERSION])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _recipe_file(cache: Path) -> Path:
    return cache.with_name(cache.name + ".recipe")


def base_is_cached(cache: Path) -> bool:
    try:
        return cache.is_file() and _recipe_file(cache).read_text().strip() == recipe_id()
    except OSError:
        return False


SSHD_DROPIN = """\
# pyhoptcluster test host: key-only root login, quick logins, room for Ansible's parallel sessions.
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
MaxStartups 100:30:200
MaxSessions 64
"""

JOURNALD_DROPIN = """\
[Journal]
# Test hosts are short-lived: keep the journal in memory, off the overlay's upper layer.
Storage=volatile
RuntimeMaxUse=32M
"""


def customize_base(root: Path) -> None:
    """Turn a fresh debootstrap into the shared, host-neutral base (per-host bits come at boot)."""
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    _write(root / "etc/ssh/sshd_config.d/pyhoptcluster-testbed.conf", SSHD_DROPIN)
    _write(root / "etc/systemd/journald.conf.d/pyhoptcluster-testbed.conf", JOURNALD_DROPIN)
    (root / "etc/machine-id").write_text("")  # each host gets its own
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.is_file() and not dbus_id.is_symlink():
        dbus_id.unlink()
    _run(["systemctl", f"--root={root}", "enable", "systemd-networkd.service", "ssh.service"])
    for unit in MASKED_UNITS:
        _run(["systemctl", f"--root={root}", "disable", unit], check=False)
        _run(["systemctl", f"--root={root}", "mask", unit])
    (root / "root/.ssh").mkdir(mode=0o700, exist_ok=True)
    # Shrink the tarball (= faster restores): package caches, indexes and docs are useless offline.
    for pattern in ("var/cache/apt/*.bin", "var/cache/apt/archives/*.deb", "var/lib/apt/lists/*"):
        for p in root.glob(pattern):
            if p.is_file():
                p.unlink()
    for d in ("usr/share/doc", "usr/share/man", "usr/share/info"):
        for p in (root / d).glob("*"):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    _write(root / "etc/pyhoptcluster-testbed", f"recipe={recipe_id()}\n")


def build_base(cache: Path, *, mirror: str | None = None, rebuild: bool = False) -> bool:
    """Build the base rootfs tarball with debootstrap unless a current one is cached. True if built."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    with _flock(cache.with_name(".build.lock")):
        if not rebuild and base_is_cached(cache):
            return False
        mirror = mirror or _apt_mirror()
        started = time.monotonic()
        _log(f"building the {SUITE} base rootfs with debootstrap from {mirror} (about 1-2 minutes)")
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=cache.parent))
        rootfs = work / "rootfs"
        log = cache.with_name("debootstrap.log")
        try:
            with open(log, "w") as fh:
                cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE]
                proc = _run(
                    [*cmd, str(rootfs), mirror],
                    check=False,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    timeout=1800,
                )
            if proc.returncode != 0:
                raise TestbedError(f"debootstrap failed (exit {proc.returncode}), see {log}:\n{_tail(log)}")
            customize_base(rootfs)
            tmp_tar = work / "base.tar"
            _run(["tar", "-C", str(rootfs), *TAR_FLAGS, "-cpf", str(tmp_tar), "."])
            os.replace(tmp_tar, cache)
            _write(_recipe_file(cache), recipe_id() + "\n")
            # the fresh rootfs is exactly what the tarball holds: keep it as the lower layer (no extraction)
            lower = lower_dir(cache)
            _rmtree(lower)
            rootfs.rename(lower)
            lower.with_name(lower.name + ".complete").touch()
        finally:
            deadline = time.monotonic() + 30
            for m in _mounts_under(work):  # debootstrap leaves /proc etc. mounted when it fails
                _umount(m, deadline)
            _rmtree(work)
        size = cache.stat().st_size / 2**20
        _log(f"base rootfs cached at {cache} ({size:.0f} MiB) in {time.monotonic() - started:.1f} s")
        return True


def lower_dir(cache: Path) -> Path:
    """Where the tarball is extracted: the read-only lower layer that every host's overlay shares.
    Named after the recipe and the tarball's identity, so a new tarball never touches one in use."""
    st = cache.stat()
    ident = hashlib.sha256(f"{recipe_id()} {st.st_size} {st.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache.with_name(f"{cache.stem}.{ident}.rootfs")


def _lower_in_use(lower: Path) -> bool:
    with open("/proc/self/mountinfo") as fh:
        return any(f"lowerdir={lower}" in line for line in fh)


def restore_base(cache: Path) -> tuple[Path, bool]:
    """Extract the cached tarball once into the shared lower layer; (its path, whether it was extracted).
    Earlier extractions that no overlay uses any more are removed."""
    with _flock(cache.with_name(".build.lock")):
        lower = lower_dir(cache)
        done = lower.with_name(lower.name + ".complete")
        extracted = False
        if not (lower.is_dir() and done.exists()):
            tmp = lower.with_name(f".{lower.name}.tmp")
            _rmtree(tmp)
            _rmtree(lower)
            tmp.mkdir(parents=True)
            _run(["tar", "-C", str(tmp), *TAR_FLAGS, "-xpf", str(cache)])
            tmp.rename(lower)
            done.touch()
            extracted = True
        for old in cache.parent.glob(f"{cache.stem}.*.rootfs"):
            if old != lower and not _lower_in_use(old):
                old.with_name(old.name + ".complete").unlink(missing_ok=True)
                _rmtree(old)
        return lower, extracted


# --------------------------------------------------------------------------------------------------
# the test bed


@dataclasses.dataclass
class HostInfo:
    name: str
    ip: str
    supervisor_pid: int | None = None
    supervisor_start: int | None = None
    system_state: str | None = None  # systemctl is-system-running once ssh answered

    @property
    def alive(self) -> bool:
        return _alive(self.supervisor_pid, self.supervisor_start)


@dataclasses.dataclass
class TestbedInfo:
    """What a running test bed offers to tests, Ansible and Molecule."""

    __test__ = False

    name: str
    subnet: str
    bridge: str
    bridge_ip: str
    hosts: list[HostInfo]
    key_path: Path
    inventory_path: Path
    state_dir: Path
    # the process that brought it up (pid, start time): while it lives, no other process tears it down
    owner_pid: int | None = None
    owner_start: int | None = None

    @property
    def ips(self) -> list[str]:
        return [h.ip for h in self.hosts]

    def ssh_command(self, host: HostInfo | str, command: str | None = None) -> list[str]:
        """argv for `ssh root@<host> <command>` with the test key and no host key checking."""
        ip = host.ip if isinstance(host, HostInfo) else host
        cmd = ["ssh", *SSH_OPTIONS, "-o", "ConnectTimeout=5", "-i", str(self.key_path), f"root@{ip}"]
        return [*cmd, command] if command is not None else cmd

    def ssh(self, host: HostInfo | str, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return _run(self.ssh_command(host, command), check=False, timeout=timeout)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(
            key_path=str(self.key_path),
            inventory_path=str(self.inventory_path),
            state_dir=str(self.state_dir),
        )
        return d

    @classmethod
    def from_json(cls, d: dict) -> TestbedInfo:
        d = dict(d)
        d["hosts"] = [HostInfo(**h) for h in d["hosts"]]
        for k in ("key_path", "inventory_path", "state_dir"):
            d[k] = Path(d[k])
        return cls(**d)


WHEELHOUSE = Path(
    os.environ.get("PYHOPTCLUSTER_WHEELHOUSE", "~/.cache/pyhoptcluster/wheelhouse")
).expanduser()


def inventory_yaml(info: TestbedInfo) -> str:
    """Ansible YAML inventory (JSON-quoted strings are valid YAML scalars)."""
    q = json.dumps
    lines = [
        f"# Generated by tests/hosts/testbed.py for the test bed {q(info.name)}; rewritten by every `up`.",
        "all:",
        "  vars:",
        f"    hyperopt_mongodb_bind_addresses: [{q(info.bridge_ip)}]",
        # The hosts have no route to an index: ship hyperopt and this package as a wheelhouse.
        f"    hyperopt_worker_wheelhouse: {q(str(WHEELHOUSE))}",
        f"    testbed_name: {q(info.name)}",
        f"    testbed_control_address: {q(info.bridge_ip)}",
        "  children:",
        "    hyperopt_master:",
        "      hosts:",
        "        localhost:",
        "          ansible_connection: local",
        f"          ansible_python_interpreter: {q('{{ ansible_playbook_python }}')}",
        "    hyperopt_workers:",
        "      hosts:",
    ]
    for h in info.hosts:
        lines += [f"        {q(h.ip)}:", f"          testbed_hostname: {q(h.name)}"]
    lines += [
        "      vars:",
        "        ansible_user: root",
        f"        ansible_ssh_private_key_file: {q(str(info.key_path))}",
        "        ansible_python_interpreter: /usr/bin/python3",
        f"        ansible_ssh_common_args: {q(ANSIBLE_SSH_COMMON_ARGS)}",
    ]
    return "\n".join(lines) + "\n"


_CHILDREN: dict[int, subprocess.Popen] = {}  # supervisors started by this process (reaped on down)


class Testbed:
    """N systemd-nspawn hosts named <name>-1..N on bridge br-<name>, addresses <subnet>.11, .12, ..."""

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
            str(Path(__file__).resolve()),
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


def _tcp_open(ip: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------------
# per-host supervisor (runs detached, one per host; its PID is what `down` stops)


def supervise(machine: str, root: str, bridge: str, cgroup: str, hierarchies: list[str]) -> int:
    # Own cgroup in every hierarchy before nspawn starts, or the hosts collide on payload/.
    for hier in hierarchies:
        d = Path(hier) / cgroup
        d.mkdir(parents=True, exist_ok=True)
        (d / "cgroup.procs").write_text(str(os.getpid()))
    cmd = [
        "systemd-nspawn",
        "-b",
        "-D",
        root,
        "-M",
        machine,
        f"--network-bridge={bridge}",
        "--register=no",
        "--keep-unit",
        "--console=passive",
    ]
    env = dict(os.environ, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="1")
    stopping = False
    child: subprocess.Popen | None = None

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)  # nspawn turns it into an orderly poweroff inside

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    rc = 0
    while not stopping:
        print(f"testbed-supervisor: starting {machine}", flush=True)
        child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        if stopping:  # a signal raced with the spawn
            child.send_signal(signal.SIGTERM)
        rc = _wait_nspawn(child, lambda: stopping, machine)
        if rc != NSPAWN_REBOOT_EXIT:
            break
        print(f"testbed-supervisor: {machine} rebooted (exit {rc}), starting it again", flush=True)
    print(f"testbed-supervisor: {machine} stopped (exit {rc})", flush=True)
    return 0 if stopping else rc


def _wait_nspawn(child: subprocess.Popen, stopping: Callable[[], bool], machine: str) -> int:
    """Wait for nspawn. Once asked to stop, repeat the SIGTERM every second: a systemd that is still
    starting has no handler for the poweroff signal yet and drops it. After STOP_GRACE seconds give
    up and leave; `down` then kills whatever is left in the host's cgroups."""
    stop_since = None
    while True:
        try:
            return child.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            pass
        if not stopping():
            continue
        stop_since = stop_since or time.monotonic()
        if time.monotonic() - stop_since > STOP_GRACE:
            print(f"testbed-supervisor: {machine} did not power off in {STOP_GRACE:.0f} s", flush=True)
            return -1
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)


# --------------------------------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="testbed.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--name", default="pyhopt", help="hosts are <name>-1..N (default pyhopt)")
        sp.add_argument(
            "--state-dir", help="default $PYHOPTCLUSTER_TESTBED_STATE or /var/tmp/pyhoptcluster-testbed"
        )

    up = sub.add_parser("up", help="bring the hosts up (idempotent) and wait until ssh answers")
    common(up)
    up.add_argument("--hosts", type=int, default=3)
    up.add_argument("--subnet", default="10.231.0", help="the bridge's /24, three octets (default 10.231.0)")
    up.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for ssh on every host")
    up.add_argument(
        "--cache",
        help="base tarball (default $PYHOPTCLUSTER_TESTBED_CACHE or "
        "~/.cache/pyhoptcluster/testbed/bookworm-base.tar)",
    )
    up.add_argument("--mirror", help="Debian mirror for debootstrap (default: the one apt uses)")
    up.add_argument("--recreate", action="store_true", help="fresh hosts even if a healthy test bed is up")
    up.add_argument("--rebuild", action="store_true", help="rebuild the cached base rootfs first")
    up.add_argument("--inventory", help="also write the inventory to this path")
    up.add_argument("--json", action="store_true", help="print the test bed description as JSON")

    down = sub.add_parser("down", help="stop the hosts and remove mounts, cgroups and the bridge")
    common(down)
    down.add_argument("--timeout", type=float, default=60.0)
    down.add_argument(
        "--force", action="store_true", help="also when another live process brought it up and uses it"
    )

    st = sub.add_parser("status", help="show hosts (exit 0 when all answer ssh, 1 otherwise)")
    common(st)
    st.add_argument("--json", action="store_true")

    inv = sub.add_parser("inventory", help="print the Ansible inventory of the running test bed")
    common(inv)
    inv.add_argument("--output", "-o", help="write it to this file instead of stdout")

    b = sub.add_parser("build", help="build the cached base rootfs (done by `up` when missing)")
    b.add_argument("--cache")
    b.add_argument("--mirror")
    b.add_argument("--rebuild", action="store_true")

    s = sub.add_parser("_supervise", help=argparse.SUPPRESS)
    s.add_argument("--machine", required=True)
    s.add_argument("--root", required=True)
    s.add_argument("--bridge", required=True)
    s.add_argument("--cgroup", required=True)
    s.add_argument("--hierarchy", action="append", default=[])
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "_supervise":
        return supervise(args.machine, args.root, args.bridge, args.cgroup, args.hierarchy)
    try:
        if args.cmd == "build":
            ensure_control_tools()
            cache = Path(args.cache).expanduser() if args.cache else default_cache_path()
            if not build_base(cache, mirror=args.mirror, rebuild=args.rebuild):
                _log(f"base rootfs is current: {cache}")
            return 0
        if args.cmd == "up":
            tb = Testbed(
                args.name,
                args.hosts,
                args.subnet,
                state_dir=args.state_dir,
                cache=args.cache,
                mirror=args.mirror,
            )
            info = tb.up(args.timeout, recreate=args.recreate, rebuild=args.rebuild)
            if args.inventory:
                _write(Path(args.inventory), inventory_yaml(info))
            print(json.dumps(tb.status(), indent=2) if args.json else info.inventory_path)
            return 0
        tb = Testbed(args.name, state_dir=args.state_dir)
        if args.cmd == "down":
            tb.down(args.timeout, force=args.force)
            return 0
        if args.cmd == "status":
            st = tb.status()
            if args.json:
                print(json.dumps(st, indent=2))
            elif not st.get("bridge"):
                print(f"{tb.name}: not up")
            else:
                health = "up" if st["up"] else "NOT HEALTHY"
                print(f"{st['name']}: {health}, bridge {st['bridge']} {st['bridge_ip']}")
                for h in st["hosts"]:
                    print(
                        f"  {h['name']:<14} {h['ip']:<15} supervisor {h['supervisor_pid']}"
                        f" {'alive' if h['alive'] else 'dead'}  ssh {'open' if h['ssh'] else 'closed'}"
                    )
            return 0 if st["up"] else 1
        if args.cmd == "inventory":
            info = tb.info()
            if info is None:
                raise TestbedError(f"test bed {tb.name!r} is not up; run `testbed.py up --name {tb.name}`")
            text = inventory_yaml(info)
            if args.output:
                _write(Path(args.output), text)
            else:
                sys.stdout.write(text)
            return 0
    except TestbedError as exc:
        print(f"testbed: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("testbed: interrupted", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
