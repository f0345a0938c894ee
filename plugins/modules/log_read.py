#!/usr/bin/python
# Copyright: pyhoptcluster developers
# Apache License 2.0 (see galaxy.yml)
# ruff: noqa: E402 -- Ansible modules put DOCUMENTATION/EXAMPLES/RETURN before the imports
"""Read the cluster's log lines on one host, from journald and from log files, with their times."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: log_read
short_description: Read the server's or the workers' log lines on a host, each with its time
version_added: "0.2.0"
description:
  - Reads the last lines of the cluster's logs on the host, from the systemd journal (units matching
    O(sources[].unit)) and from log files (paths matching O(sources[].path)), whichever exist, and
    returns them as records with a time (seconds since the epoch), the source's tag, the worker
    instance and the text, oldest first.
  - A journal record's time is the journal's. A file line's time is the timestamp it starts with
    (C(2026-12-03 09:45:01,123) as Python's logging writes it, in the host's local time, or an ISO 8601
    time with an offset, or mongod's JSON C({"t":{"$date":...}})); a line without one (a traceback)
    gets the time of the line before it.
  - The instance is the number after C(@) in a unit name, or in C(-N.log) of a file name.
  - Read-only, never reports a change; runs in check mode too. Standard library only.
options:
  sources:
    description: Where to look. Each entry has a O(sources[].tag) and a unit glob or a path glob (or both).
    type: list
    elements: dict
    required: true
    suboptions:
      tag:
        description: The name the records carry, e.g. C(server) or C(worker).
        type: str
        required: true
      unit:
        description: A systemd unit name or glob for C(journalctl -u), e.g. C(hyperopt-worker@*.service).
        type: str
      path:
        description:
          - A file path or glob, e.g. C(/var/lib/hyperopt-worker/worker-*.log). Rotated copies are not read.
        type: str
  since:
    description:
      - Only records at or after this time (seconds since the epoch).
      - Default all that O(lines) allows.
    type: float
  lines:
    description: At most this many records per unit glob and per file (the newest).
    type: int
    default: 200
  instance:
    description: Only records of this worker instance.
    type: int
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
author:
  - pyhoptcluster developers
"""

EXAMPLES = r"""
- name: The workers' last 50 lines, from the journal or the supervisord log files
  pyhoptcluster.cluster.log_read:
    sources:
      - tag: worker
        unit: hyperopt-worker@*.service
        path: /var/lib/hyperopt-worker/worker-*.log
    lines: 50
  register: worker_logs
"""

RETURN = r"""
records:
  description:
    - The records, oldest first, each a list of time (epoch seconds), tag, instance (or null) and text.
  returned: always
  type: list
  elements: list
  sample: [[1764755101.123, "worker", 1, "2026-12-03 09:45:01,123 INFO worker[1] 4242 ...: starting"]]
sources:
  description: The units and files that were read.
  returned: always
  type: list
  elements: str
"""

import datetime
import glob
import json
import os
import re
import shutil
import subprocess
import time

from ansible.module_utils.basic import AnsibleModule

_LOGGING_TIME = re.compile(
    r"^(\d{4}-\d\d-\d\d)[ T](\d\d:\d\d:\d\d)(?:[.,](\d{1,9}))?(Z|[+-]\d\d:?\d\d)?(?=[\s\]])"
)
_MONGOD_JSON = re.compile(r'^\{"t":\{"\$date":"([^"]+)"\}')
_INSTANCE_UNIT = re.compile(r"@(\d+)\.service$")
_INSTANCE_FILE = re.compile(r"-(\d+)\.log$")
_TAIL_BLOCK = 65536


def line_time(line):
    """Seconds since the epoch of the timestamp ``line`` starts with, or None."""
    m = _MONGOD_JSON.match(line)
    if m:
        try:
            return datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    m = _LOGGING_TIME.match(line)
    if not m:
        return None
    day, clock, frac, zone = m.groups()
    fraction = float("0." + frac) if frac else 0.0
    if zone is None:  # Python logging's asctime: the host's local time
        try:
            return time.mktime(time.strptime(f"{day} {clock}", "%Y-%m-%d %H:%M:%S")) + fraction
        except (ValueError, OverflowError):
            return None
    zone = "+00:00" if zone == "Z" else zone
    try:
        stamp = datetime.datetime.fromisoformat(f"{day}T{clock}{zone}")
    except ValueError:
        return None
    return stamp.timestamp() + fraction


def tail_lines(path, count):
    """The last ``count`` lines of the file at ``path`` (read from its end, not the whole file)."""
    with open(path, "rb") as f:
        pos = f.seek(0, os.SEEK_END)
        data = b""
        while pos > 0 and data.count(b"\n") <= count:
            step = min(_TAIL_BLOCK, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[-count:] if count > 0 else []


def file_records(path, tag, count, since):
    """Records of one file: each line with its own time or the one before it."""
    m = _INSTANCE_FILE.search(os.path.basename(path))
    instance = int(m.group(1)) if m else None
    try:
        lines = tail_lines(path, count)
        fallback = os.path.getmtime(path)
    except OSError:
        return []
    records = []
    last = None
    for line in lines:
        stamp = line_time(line)
        if stamp is not None:
            last = stamp
        elif last is None:  # a continuation at the cut: no time to give it yet
            continue
        records.append([last, tag, instance, line])
    if not records and lines:
        records = [[fallback, tag, instance, line] for line in lines]
    return [r for r in records if since is None or r[0] >= since]


def journal_records(unit, tag, count, since):
    """Records of the journal for the units matching ``unit`` (none without journalctl)."""
    journalctl = shutil.which("journalctl")
    if journalctl is None or not os.path.isdir("/run/systemd/system"):
        return []
    cmd = [journalctl, "--no-pager", "-o", "json", "-u", unit, "-n", str(count)]
    if since is not None:
        cmd += ["--since", "@%.6f" % since]
    try:
        out = subprocess.run(cmd, capture_output=True, timeout=60, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    records = []
    for raw in out.splitlines():
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        message = entry.get("MESSAGE")
        if isinstance(message, list):  # journald's form of a message that is not valid UTF-8
            message = bytes(message).decode("utf-8", errors="replace")
        if message is None:
            continue
        name = entry.get("_SYSTEMD_UNIT") or entry.get("UNIT") or ""
        m = _INSTANCE_UNIT.search(name)
        stamp = int(entry.get("__REALTIME_TIMESTAMP", 0)) / 1e6
        if since is not None and stamp < since:
            continue
        records.append([stamp, tag, int(m.group(1)) if m else None, str(message)])
    return records


def main():
    module = AnsibleModule(
        argument_spec={
            "sources": {
                "type": "list",
                "elements": "dict",
                "required": True,
                "options": {
                    "tag": {"type": "str", "required": True},
                    "unit": {"type": "str"},
                    "path": {"type": "str"},
                },
            },
            "since": {"type": "float"},
            "lines": {"type": "int", "default": 200},
            "instance": {"type": "int"},
        },
        supports_check_mode=True,
    )
    p = module.params
    records = []
    read = []
    for source in p["sources"]:
        if source.get("unit"):
            found = journal_records(source["unit"], source["tag"], p["lines"], p["since"])
            if found:
                read.append("journal:" + source["unit"])
            records.extend(found)
        if source.get("path"):
            for path in sorted(glob.glob(os.path.expanduser(source["path"]))):
                read.append(path)
                records.extend(file_records(path, source["tag"], p["lines"], p["since"]))
    if p["instance"] is not None:
        records = [r for r in records if r[2] == p["instance"]]
    records.sort(key=lambda r: r[0])
    module.exit_json(changed=False, records=records, sources=read)


if __name__ == "__main__":
    main()
