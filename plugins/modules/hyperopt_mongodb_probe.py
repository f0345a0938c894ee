#!/usr/bin/python
# Copyright: pyhoptcluster developers
# Apache License 2.0 (see LICENSE)
"""One read-only look at the control node for the hyperopt_mongodb role (its warm path)."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: hyperopt_mongodb_probe
short_description: Look at the hyperopt_mongodb server's state on the control node (read-only)
description:
  - Everything the role needs to decide what to change, in one call, without changing anything
    (stdlib only; runs in check mode too; never reports a change).
  - Paths are expanded the way Ansible's C(path) options expand them (C(~), C($VAR)), so the
    returned paths are the ones the file module would report.
  - "Reports: the mode and owner of the state dir and the dbpath; server.json as the last run wrote
    it; the SecantusDB versions whose dist-info is in the venv (read from its METADATA, no
    interpreter started); mode, owner and sha1 of the role's files; the systemd unit's state; the
    source address of the route to O(route_to). Whether systemd runs the host and what supervisord
    runs come from the probe of roles/hyperopt_supervisor, not from here."
  - Files are looked up in the state dir and in the dbpath's parent (the role's state dir is the
    dbpath's parent when the dbpath is the default); results are keyed by the path as
    C(<dir>/<name>), the way the role builds it.
options:
  state_dir:
    description: The role's state directory.
    type: str
    required: true
  dbpath:
    description: The data directory ('' = none).
    type: str
    default: ""
  venv:
    description: SecantusDB's virtualenv ('' = not installed by pip).
    type: str
    default: ""
  state_files:
    description: Names of files in the state dir to report mode, owner and sha1 of.
    type: list
    elements: str
    default: []
  db_files:
    description: Names of files in the dbpath to report mode, owner and sha1 of.
    type: list
    elements: str
    default: []
  files:
    description: Absolute paths of other files to report mode, owner and sha1 of.
    type: list
    elements: str
    default: []
  service_manager:
    description: The role's hyperopt_mongodb_service_manager (auto, systemd, supervisor or daemon); the
      unit's state is only asked for when it is (or auto resolves to) systemd.
    type: str
    default: auto
  systemd_booted:
    description: Whether systemd runs the host (what roles/hyperopt_supervisor's probe found); auto
      resolves to systemd then, unless server.json names the manager of the last run.
    type: bool
    default: false
  unit:
    description: The systemd unit of the server.
    type: str
    default: hyperopt-mongodb.service
  route_to:
    description: Address whose route's source address to report ('' = none). No packet is sent.
    type: str
    default: ""
  binary:
    description: A server program to look at ('' = none).
    type: str
    default: ""
  which:
    description: A program name to look up on the PATH ('' = none); the result is RV(which).
    type: str
    default: ""
author:
  - pyhoptcluster developers
"""

RETURN = r"""
state_dir:
  description: O(state_dir), expanded.
  returned: always
  type: str
dbpath:
  description: O(dbpath), expanded.
  returned: always
  type: str
dirs:
  description: "For state_dir and dbpath: C(exists), C(isdir), C(mode) (like C(0700)), C(owner), C(uid)."
  returned: always
  type: dict
previous:
  description: server.json in the state dir, parsed ({} when missing or unreadable).
  returned: always
  type: dict
venv:
  description: O(venv), expanded and made absolute ('' without O(venv)).
  returned: always
  type: str
venv_python:
  description: Whether the venv's bin/python exists (and its symlink target does).
  returned: always
  type: bool
secantusdb_versions:
  description: Versions of every secantusdb dist-info in the venv's site-packages.
  returned: always
  type: list
files:
  description: Path -> C(mode), C(owner), C(uid), C(checksum) (sha1) for every asked-for file that exists.
  returned: always
  type: dict
systemd:
  description: C(active) (bool) and C(enabled) (the word systemctl is-enabled prints); {} when not asked.
  returned: always
  type: dict
route:
  description: Source address of the route to O(route_to).
  returned: when O(route_to) is set and the kernel has a route
  type: str
route_error:
  description: Why there is no route to O(route_to).
  returned: when O(route_to) is set and the kernel has no route
  type: str
which:
  description: The absolute path of O(which) on the PATH, or '' when it is not there.
  returned: when O(which) is set
  type: str
binary:
  description: For O(binary) (symlinks followed), C(exists), C(isreg) and C(executable) (by this user).
  returned: when O(binary) is set
  type: dict
"""


def expand(path):
    """What an Ansible 'path' option makes of a string."""
    return os.path.expanduser(os.path.expandvars(path)) if path else ""


def owner_of(st):
    try:
        return pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        return str(st.st_uid)


def describe_dir(path):
    try:
        st = os.stat(path)
    except OSError:
        return {"exists": os.path.lexists(path), "isdir": False}
    return {
        "exists": True,
        "isdir": stat.S_ISDIR(st.st_mode),
        "mode": f"{stat.S_IMODE(st.st_mode):04o}",
        "owner": owner_of(st),
        "uid": st.st_uid,
    }


def describe_file(path):
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return None
        digest = hashlib.sha1()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(65536), b""):
                digest.update(chunk)
    except OSError:
        return None
    return {
        "mode": f"{stat.S_IMODE(st.st_mode):04o}",
        "owner": owner_of(st),
        "uid": st.st_uid,
        "checksum": digest.hexdigest(),
    }


def read_text(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


# ---------------------------------------------------------------------------------- the rest


def secantusdb_versions(venv):
    versions = []
    pattern = os.path.join(glob.escape(venv), "lib", "python*", "site-packages", "*.dist-info")
    for info in sorted(glob.glob(pattern)):
        name = os.path.basename(info)[: -len(".dist-info")].split("-")[0]
        if re.sub(r"[-_.]+", "_", name).lower() != "secantusdb":
            continue
        for line in (read_text(os.path.join(info, "METADATA")) or "").splitlines():
            if not line.strip():
                break  # end of the headers
            if line.startswith("Version:"):
                versions.append(line.split(":", 1)[1].strip())
                break
    return versions


def systemd_state(unit):
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return {"active": False, "enabled": ""}

    def run(*args):
        out = subprocess.run([systemctl, *args, unit], capture_output=True, text=True, check=False)
        return out

    return {
        "active": run("is-active", "--quiet").returncode == 0,
        "enabled": run("is-enabled").stdout.strip(),
    }


def route_source(address):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((address, 9))  # a UDP connect only asks the routing table; nothing is sent
        return s.getsockname()[0]


def main():
    module = AnsibleModule(
        argument_spec={
            "state_dir": {"type": "str", "required": True},
            "dbpath": {"type": "str", "default": ""},
            "venv": {"type": "str", "default": ""},
            "state_files": {"type": "list", "elements": "str", "default": []},
            "db_files": {"type": "list", "elements": "str", "default": []},
            "files": {"type": "list", "elements": "str", "default": []},
            "service_manager": {"type": "str", "default": "auto"},
            "systemd_booted": {"type": "bool", "default": False},
            "unit": {"type": "str", "default": "hyperopt-mongodb.service"},
            "route_to": {"type": "str", "default": ""},
            "binary": {"type": "str", "default": ""},
            "which": {"type": "str", "default": ""},
        },
        supports_check_mode=True,
    )
    p = module.params
    state_dir, dbpath = expand(p["state_dir"]), expand(p["dbpath"])
    # The role's state dir is dirname(dbpath) when dbpath is the default <state_dir>/db.
    state_dirs = [state_dir]
    if dbpath and os.path.dirname(dbpath) != state_dir:
        state_dirs.append(os.path.dirname(dbpath))
    result = {
        "changed": False,
        "state_dir": state_dir,
        "dbpath": dbpath,
        "dirs": {"hyperopt_mongodb_state_dir": describe_dir(state_dir)},
        "files": {},
        "systemd": {},
    }
    if dbpath:
        result["dirs"]["hyperopt_mongodb_dbpath"] = describe_dir(dbpath)

    try:
        previous = json.loads(read_text(state_dir + "/server.json") or "{}")
    except ValueError:
        previous = {}
    result["previous"] = previous if isinstance(previous, dict) else {}

    venv = os.path.abspath(expand(p["venv"])) if p["venv"] else ""
    result["venv"] = venv
    result["venv_python"] = bool(venv) and os.path.exists(os.path.join(venv, "bin", "python"))
    result["secantusdb_versions"] = secantusdb_versions(venv) if venv else []

    paths = [d + "/" + name for d in state_dirs for name in p["state_files"]]
    paths += [dbpath + "/" + name for name in p["db_files"] if dbpath]
    for path in paths + p["files"]:
        info = describe_file(path)
        if info is not None:
            result["files"][path] = info

    manager = p["service_manager"]
    if manager == "auto":
        manager = result["previous"].get("service_manager") or (
            "systemd" if p["systemd_booted"] else "supervisor"
        )
    if manager == "systemd":
        result["systemd"] = systemd_state(p["unit"])

    if p["route_to"]:
        try:
            result["route"] = route_source(p["route_to"])
        except OSError as e:
            result["route_error"] = f"no route from this host to {p['route_to']}: {e}"
    if p["binary"]:
        binary = expand(p["binary"])
        result["binary"] = {
            "exists": os.path.exists(binary),
            "isreg": os.path.isfile(binary),
            "executable": os.access(binary, os.X_OK),
        }
    if p["which"]:
        result["which"] = shutil.which(p["which"]) or ""
    module.exit_json(**result)


if __name__ == "__main__":
    main()
