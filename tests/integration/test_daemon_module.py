"""pyhoptcluster.cluster.daemon, run the way roles run it: through `ansible localhost -m`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = Path(sys.executable).parent / "ansible"

PROGRAM = textwrap.dedent(
    """\
    import os, signal, sys, time
    print("started with FOO=%s SECRET=%s" % (os.environ.get("FOO"), os.environ.get("SECRET_TOKEN")),
          flush=True)
    mode = sys.argv[1] if len(sys.argv) > 1 else "run"
    if mode == "die":
        print("fatal: cannot read the config", flush=True)
        sys.exit(3)
    if mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(0.2)
    """
)


def run_daemon(check: bool = False, **args) -> tuple[int, dict]:
    """Run the module once on localhost; returns (rc, result dict)."""
    cmd = [
        str(ANSIBLE),
        "localhost",
        "-c",
        "local",
        "-i",
        "localhost,",
        "-e",
        f"ansible_python_interpreter={sys.executable}",
        "-m",
        "pyhoptcluster.cluster.daemon",
        "-a",
        json.dumps(args),
    ]
    if check:
        cmd.append("--check")
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_CALLBACK_RESULT_FORMAT="json",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_DEPRECATION_WARNINGS="0",
    )
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    out = proc.stdout
    start = out.find("=> {")
    assert start >= 0, f"no module result in output:\n{out}\n{proc.stderr}"
    return proc.returncode, json.loads(out[start + 3 :])


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [p.decode() for p in raw.split(b"\0") if p]


def alive(pid: int) -> bool:
    """True for a running process (a zombie waiting for a reaper counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


@pytest.fixture
def sandbox(tmp_path):
    """A directory for pid files; every daemon started in it is stopped afterwards, by pid."""
    prog = tmp_path / "prog.py"
    prog.write_text(PROGRAM)
    yield tmp_path
    for pidfile in tmp_path.rglob("*.pid"):
        try:
            pid = int(pidfile.read_text())
        except (OSError, ValueError):
            continue
        if str(prog) in cmdline(pid):  # only what this test started
            os.kill(pid, signal.SIGKILL)


def argv_for(sandbox: Path, *args: str) -> list[str]:
    return [sys.executable, str(sandbox / "prog.py"), *args]


def test_start_is_detached_and_idempotent(sandbox):
    pidfile = sandbox / "run" / "d.pid"
    rc, res = run_daemon(name="d", argv=argv_for(sandbox), pidfile=str(pidfile))
    assert rc == 0 and res["changed"] and res["running"]
    pid = res["pid"]
    assert int(pidfile.read_text()) == pid
    assert cmdline(pid) == argv_for(sandbox)
    assert os.getsid(pid) != os.getsid(0)  # own session
    fds = sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd"))
    assert fds == [0, 1, 2]
    assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
    assert os.readlink(f"/proc/{pid}/fd/1") == str(pidfile) + ".log"
    record = json.loads((sandbox / "run" / "d.pid.json").read_text())
    assert record["pid"] == pid and record["argv"] == argv_for(sandbox)

    rc, res = run_daemon(name="d", argv=argv_for(sandbox), pidfile=str(pidfile))
    assert rc == 0 and not res["changed"] and res["pid"] == pid


def test_env_file_reaches_the_daemon_but_not_its_cmdline(sandbox):
    env_file = sandbox / "daemon.env"
    env_file.write_text('# credentials\nFOO=bar\nSECRET_TOKEN="s3cr3t-value"\n')
    env_file.chmod(0o600)
    pidfile = sandbox / "e.pid"
    rc, res = run_daemon(name="e", argv=argv_for(sandbox), pidfile=str(pidfile), env_file=str(env_file))
    assert rc == 0, res
    pid = res["pid"]
    assert "s3cr3t-value" not in " ".join(cmdline(pid))
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert b"SECRET_TOKEN=s3cr3t-value" in environ
    assert "s3cr3t-value" not in json.dumps(res)
    deadline = time.monotonic() + 5
    while "FOO=bar" not in (sandbox / "e.pid.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "FOO=bar" in (sandbox / "e.pid.log").read_text()


def test_stop_terminates_and_second_stop_changes_nothing(sandbox):
    pidfile = sandbox / "s.pid"
    _, res = run_daemon(name="s", argv=argv_for(sandbox), pidfile=str(pidfile))
    pid = res["pid"]
    rc, res = run_daemon(pidfile=str(pidfile), state="stopped")
    assert rc == 0 and res["changed"] and not res["running"] and not res["killed"]
    assert not alive(pid)
    assert not pidfile.exists() and not (sandbox / "s.pid.json").exists()
    rc, res = run_daemon(pidfile=str(pidfile), state="stopped")
    assert rc == 0 and not res["changed"]


def test_stop_sends_sigkill_after_stop_timeout(sandbox):
    pidfile = sandbox / "k.pid"
    _, res = run_daemon(name="k", argv=argv_for(sandbox, "ignore-term"), pidfile=str(pidfile))
    pid = res["pid"]
    rc, res = run_daemon(pidfile=str(pidfile), state="stopped", stop_timeout=0.5)
    assert rc == 0 and res["killed"]
    assert not alive(pid)


def test_restarted_replaces_the_process(sandbox):
    pidfile = sandbox / "r.pid"
    _, first = run_daemon(name="r", argv=argv_for(sandbox), pidfile=str(pidfile))
    rc, res = run_daemon(name="r", argv=argv_for(sandbox), pidfile=str(pidfile), state="restarted")
    assert rc == 0 and res["changed"] and res["pid"] != first["pid"]
    assert not alive(first["pid"]) and alive(res["pid"])


def test_stale_pid_of_unrelated_process_is_left_alone(sandbox):
    """A pid file naming someone else's process: never signal it, replace the pid file."""
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        pidfile = sandbox / "st.pid"
        pidfile.write_text(f"{bystander.pid}\n")
        rc, res = run_daemon(pidfile=str(pidfile), state="stopped")
        assert rc == 0 and res["stale_removed"] and not pidfile.exists()
        assert bystander.poll() is None

        pidfile.write_text(f"{bystander.pid}\n")
        rc, res = run_daemon(name="st", argv=argv_for(sandbox), pidfile=str(pidfile))
        assert rc == 0 and res["stale_removed"] and res["pid"] != bystander.pid
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_stale_pid_of_dead_process_is_replaced(sandbox):
    gone = subprocess.Popen(["true"])
    gone.wait()
    pidfile = sandbox / "dead.pid"
    pidfile.write_text(f"{gone.pid}\n")
    rc, res = run_daemon(name="dead", argv=argv_for(sandbox), pidfile=str(pidfile))
    assert rc == 0 and res["changed"] and res["stale_removed"] and alive(res["pid"])


def test_process_dying_at_start_fails_with_log_tail(sandbox):
    pidfile = sandbox / "die.pid"
    rc, res = run_daemon(name="die", argv=argv_for(sandbox, "die"), pidfile=str(pidfile))
    assert rc != 0
    assert "died right after start" in res["msg"]
    assert "fatal: cannot read the config" in res["msg"]
    assert not pidfile.exists()


def test_missing_program_fails_clearly(sandbox):
    rc, res = run_daemon(name="nope", argv=[str(sandbox / "missing")], pidfile=str(sandbox / "n.pid"))
    assert rc != 0 and "not an executable file" in res["msg"]


def test_shebang_script_is_recognised_for_stop(sandbox):
    """The kernel puts the #! interpreter in front of argv; the daemon is still ours."""
    script = sandbox / "tool"
    script.write_text(f"#!{sys.executable}\n" + PROGRAM)
    script.chmod(0o755)
    pidfile = sandbox / "sb.pid"
    _, res = run_daemon(name="sb", argv=[str(script), "run"], pidfile=str(pidfile))
    pid = res["pid"]
    assert cmdline(pid)[-2:] == [str(script), "run"]
    rc, res = run_daemon(name="sb", argv=[str(script), "run"], pidfile=str(pidfile))
    assert rc == 0 and not res["changed"]
    rc, res = run_daemon(pidfile=str(pidfile), state="stopped")
    assert res["changed"] and not alive(pid)


def test_check_mode_changes_nothing(sandbox):
    pidfile = sandbox / "c.pid"
    rc, res = run_daemon(check=True, name="c", argv=argv_for(sandbox), pidfile=str(pidfile))
    assert rc == 0 and res["changed"] and not pidfile.exists()
    _, started = run_daemon(name="c", argv=argv_for(sandbox), pidfile=str(pidfile))
    rc, res = run_daemon(check=True, pidfile=str(pidfile), state="stopped")
    assert rc == 0 and res["changed"] and alive(started["pid"])
