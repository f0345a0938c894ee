#!/usr/bin/env python3
"""Multi-host test bed: systemd-nspawn containers booting Debian bookworm, for pytest and Molecule.

Each host is a full systemd machine (PID 1 = systemd, sshd with key auth, its own IP on a private
bridge, no route to the internet) running on an overlayfs over one cached base rootfs.

    python3 tests/hosts/testbed.py up --hosts 3 [--name pyhopt] [--subnet 10.231.0]
    python3 tests/hosts/testbed.py status [--json]
    python3 tests/hosts/testbed.py inventory [--output PATH]
    python3 tests/hosts/testbed.py down
    python3 tests/hosts/testbed.py freeze HOST / thaw HOST   # a host that stops answering, and back
    python3 tests/hosts/testbed.py build [--rebuild]      # only build/refresh the cached base rootfs

As a module (stdlib only)::

    tb = Testbed(name="pyhopt", hosts=3)
    info = tb.up()            # -> TestbedInfo(inventory_path, key_path, hosts=[HostInfo(name, ip)], ...)
    ...
    tb.down()

The recipe (cgroups, nspawn flags, exit code 133, ...) is explained step by step in
tests/hosts/README.md. Needs root and Linux with overlayfs, veth and bridges.

This module is the CLI; the code lives in its siblings, one concern each: testbed_sys (process, mount
and cgroup helpers), testbed_base (the cached base rootfs), testbed_info (TestbedInfo, ssh, the
inventory), testbed_supervisor (the per-host supervisor), testbed_state (status and `down`) and
testbed_hosts (class Testbed, `up`). It re-exports their API: import or load only this file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Run as a script, this directory is sys.path[0]; loaded by path (fixtures.load_testbed, bench) it may
# not be on sys.path at all, and the siblings below are imported by their plain names.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

# Re-exported (hence noqa F401): the public API, and the helpers tests/integration/test_testbed.py uses.
from testbed_base import (  # noqa: E402, F401
    BASE_PACKAGES,
    CONTROL_TOOLS,
    DEFAULT_MIRROR,
    JOURNALD_DROPIN,
    MASKED_UNITS,
    RECIPE_VERSION,
    SSHD_DROPIN,
    SUITE,
    TAR_FLAGS,
    base_is_cached,
    build_base,
    customize_base,
    default_cache_path,
    ensure_control_tools,
    lower_dir,
    recipe_id,
    restore_base,
)
from testbed_hosts import (  # noqa: E402, F401
    KEYGEN,
    SCRIPT,
    Testbed,
)
from testbed_info import (  # noqa: E402, F401
    ANSIBLE_SSH_COMMON_ARGS,
    SSH_OPTIONS,
    WHEELHOUSE,
    HostInfo,
    TestbedInfo,
    inventory_yaml,
)
from testbed_state import (  # noqa: E402, F401
    CGROUP_PREFIX,
    FIRST_HOST_OCTET,
    NAME_RE,
    TestbedState,
    default_state_root,
)
from testbed_supervisor import (  # noqa: E402, F401
    NSPAWN_REBOOT_EXIT,
    STOP_GRACE,
    supervise,
)
from testbed_sys import (  # noqa: E402, F401
    POLL_INTERVAL,
    TestbedError,
    _alive,
    _cgroup_hierarchies,
    _cgroup_pids,
    _log,
    _mounts_under,
    _proc_start_time,
    _write,
)


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

    for verb, what in (
        ("freeze", "freeze every process of a host (it stops answering) until `thaw`"),
        ("thaw", "let a frozen host go on"),
    ):
        fz = sub.add_parser(verb, help=what)
        common(fz)
        fz.add_argument("host", help="host name (<name>-N) or IP")

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
        if args.cmd in ("freeze", "thaw"):
            getattr(tb, args.cmd)(args.host)
            _log(f"{args.host}: {'frozen' if tb.frozen(args.host) else 'thawed'}")
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
                        + ("  FROZEN" if h.get("frozen") else "")
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
