"""The cached base rootfs of the test bed (testbed.py): the control node's tools, the debootstrap
recipe, the tarball it is cached as and the shared lower layer every host's overlay sits on."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from testbed_sys import TestbedError, _flock, _log, _mounts_under, _rmtree, _run, _tail, _umount, _write

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
TAR_FLAGS = ("--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls")


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
