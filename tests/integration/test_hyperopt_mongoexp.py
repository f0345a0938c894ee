"""hyperopt's own Mongo-mode test suite, run with pymongo 4 against SecantusDB.

``hyperopt/tests/integration/test_mongoexp.py`` ships inside the installed hyperopt package. Its
``TempMongo`` runs ``mongod --dbpath=<workdir>/db --noprealloc --port=22334`` (cwd = workdir,
fixed ``/tmp/hyperopt_test``) and stops it with SIGTERM. We put a stand-in ``mongod`` first on
PATH that execs secantusd-py with those flags translated, and records its PID so we can stop
anything the suite leaves behind. Port and workdir are fixed by the suite, so a file lock
serialises runs by several people on one machine.

The suite runs in a child pytest so it gets a clean interpreter; the patch reaches it through
a tiny plugin module (``-p``) that imports pyhoptcluster before hyperopt's test module is
collected. The suite itself runs its workers as threads and ``main_worker_helper(max_jobs=1)``
in-process; should a version of it spawn ``hyperopt-mongo-worker`` (stock's per-job subprocess
mode re-executes ``sys.argv[0]``), the stand-in ``hyperopt-mongo-worker`` on PATH imports
pyhoptcluster first, so those processes are patched too.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SUITE = "hyperopt.tests.integration.test_mongoexp"
SUITE_PORT = 22334  # fixed in TempMongo
SUITE_WORKDIR = "/tmp/hyperopt_test"  # fixed in TempMongo
LOCK_PATH = f"/tmp/pyhoptcluster-hyperopt-suite-{SUITE_PORT}.lock"
EXPECTED_TESTS = 12
# the suite takes ~25 s; one of its thread tests hung once (a worker loop that gives up leaves fmin
# waiting forever): dump the stacks after HANG_DUMP_S, give up after SUITE_TIMEOUT_S
HANG_DUMP_S = 90
SUITE_TIMEOUT_S = 240

MONGOD_STANDIN = """#!/bin/sh
# Stand-in for `mongod` used by hyperopt's TempMongo: translate its flags for secantusd-py.
dbpath=./db
port=27017
while [ $# -gt 0 ]; do
  case "$1" in
    --dbpath=*) dbpath="${1#--dbpath=}" ;;
    --dbpath) shift; dbpath="$1" ;;
    --port=*) port="${1#--port=}" ;;
    --port) shift; port="$1" ;;
    --noprealloc|--nojournal|--quiet) ;;
    *) echo "mongod stand-in: ignoring $1" >&2 ;;
  esac
  shift
done
echo $$ >> %(pidfile)s
exec %(secantusd)s --host 127.0.0.1 --port "$port" --storage-path "$dbpath" --standalone
"""

WORKER_STANDIN = """#!/bin/sh
exec %(python)s -c '%(code)s' "$@"
"""
WORKER_CODE = "import sys, pyhoptcluster; from hyperopt.mongoexp import main; sys.argv[0] = %r; main()"


def _text(output: bytes | str | None) -> str:
    """What a timed-out child wrote (bytes on POSIX even with text=True)."""
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _stop_leftovers(pidfile: Path) -> list[int]:
    """Stop stand-in servers the suite left running: by recorded PID, only if still ours."""
    left = []
    if not pidfile.exists():
        return left
    for pid in {int(p) for p in pidfile.read_text().split()}:
        if "secantusd" in _cmdline(pid) and SUITE_WORKDIR in _cmdline(pid):
            left.append(pid)
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    for pid in left:
        while _cmdline(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _cmdline(pid):
            os.kill(pid, signal.SIGKILL)
    return left


def test_hyperopt_mongoexp_suite_passes_on_pymongo4(
    tmp_path: Path, secantusd_binary: Path, monkeypatch: pytest.MonkeyPatch, record_property
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    pidfile = tmp_path / "mongod.pids"
    mongod = bindir / "mongod"
    mongod.write_text(
        MONGOD_STANDIN
        % {"pidfile": shlex.quote(str(pidfile)), "secantusd": shlex.quote(str(secantusd_binary))}
    )
    worker = bindir / "hyperopt-mongo-worker"
    worker.write_text(
        WORKER_STANDIN % {"python": shlex.quote(sys.executable), "code": WORKER_CODE % str(worker)}
    )
    for script in (mongod, worker):
        script.chmod(0o755)
    plugindir = tmp_path / "plugin"
    plugindir.mkdir()
    (plugindir / "pyhoptcluster_patch_plugin.py").write_text("import pyhoptcluster  # noqa: F401\n")
    # keep this repo's pytest settings out; the suite uses pytest-timeout's mark, not installed here
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    timeout: pytest-timeout mark\n")
    junit = tmp_path / "suite.xml"

    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(plugindir), os.environ.get("PYTHONPATH")]))
    )
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-c",
        str(tmp_path / "pytest.ini"),
        "--rootdir",
        str(tmp_path),
        "-p",
        "pyhoptcluster_patch_plugin",
        "-p",
        "no:cacheprovider",
        "--pyargs",
        SUITE,
        "-q",
        f"--junitxml={junit}",
        # a test of the suite that hangs (its threads wait on each other) dumps every thread's stack
        "-o",
        f"faulthandler_timeout={HANG_DUMP_S}",
    ]
    with open(LOCK_PATH, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # someone else on this machine may run the suite right now
        try:
            if _port_in_use(SUITE_PORT):
                pytest.fail(f"port {SUITE_PORT} (fixed by hyperopt's TempMongo) is taken by another process")
            t0 = time.monotonic()
            try:
                proc = subprocess.run(
                    cmd, cwd=tmp_path, capture_output=True, text=True, timeout=SUITE_TIMEOUT_S
                )
            except subprocess.TimeoutExpired as exc:  # say where it hung: the faulthandler's dump
                out = _text(exc.stdout) + _text(exc.stderr)
                pytest.fail(f"hyperopt's suite did not finish in {SUITE_TIMEOUT_S} s:\n{out[-12000:]}")
            duration = time.monotonic() - t0
        finally:
            leftovers = _stop_leftovers(pidfile)
    record_property("suite_seconds", round(duration, 1))
    print(f"\nhyperopt {SUITE}: {duration:.1f} s\n{proc.stdout[-3000:]}")

    assert junit.exists(), proc.stdout + proc.stderr
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    assert counts == {"tests": EXPECTED_TESTS, "failures": 0, "errors": 0, "skipped": 0}, proc.stdout[-6000:]
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert not leftovers, f"the suite left servers running: {leftovers}"
