"""The hyperopt_mongodb role for real: playbooks/master.yml on inventories/local starts a SecantusDB
server (pip install method, a program of the supervisord in <state dir>/supervisor) in a private state
dir, and the tests check what the role promises: port choice, auth, secrecy of the password,
idempotence, failures, stop, check mode.

Every supervisord a test starts is killed in teardown with its programs, by the pids it reports and its
pid file (only a supervisord whose command line names that state dir is signalled).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pymongo
import pytest
from local_cluster import SUPERVISOR_VENV, Supervisor
from pymongo.errors import OperationFailure

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# Share the (slow to install, stateless) SecantusDB venv with the default location.
SECANTUSD = Path(
    os.environ.get("PYHOPTCLUSTER_SECANTUSD")
    or "~/.local/share/pyhoptcluster/secantusdb-venv/bin/secantusd-py"
).expanduser()
VENV = SECANTUSD.parent.parent
RECAP = re.compile(r"^localhost\s*:.*\bchanged=(\d+)\b.*\bfailed=(\d+)", re.M)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class Run:
    rc: int
    output: str
    seconds: float

    @property
    def changed(self) -> int:
        match = RECAP.search(self.output)
        assert match, f"no PLAY RECAP in:\n{self.output}"
        return int(match.group(1))


def playbook(name: str, state_dir: Path, *extra: str, path_prefix: Path | None = None) -> Run:
    cmd = [
        str(BIN / "ansible-playbook"),
        f"playbooks/{name}",
        "-i",
        "inventories/local",
        "-e",
        f"hyperopt_mongodb_state_dir={state_dir}",
        "-e",
        f"hyperopt_mongodb_pip_venv={VENV}",
        "-e",
        f"hyperopt_supervisor_venv={SUPERVISOR_VENV}",
        *extra,
    ]
    path = f"{BIN}{os.pathsep}{os.environ['PATH']}"
    if path_prefix is not None:
        path = f"{path_prefix}{os.pathsep}{path}"
    env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "PATH": path}
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    return Run(proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start)


def stop_by_pidfiles(state_dir: Path) -> None:
    """Kill the supervisord of state_dir and the programs it runs; never anything else."""
    Supervisor(state_dir / "supervisor").kill()


def alive(pid: int) -> bool:
    """True for a live process (a zombie waiting for PID 1 to reap it is dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def running_pid(state_dir: Path) -> int | None:
    """The server's pid, as the supervisord of state_dir says (None when it runs no server)."""
    return Supervisor(state_dir / "supervisor").pids().get("hyperopt-mongodb")


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """A private state dir; whatever server it ends up holding is stopped afterwards."""
    path = tmp_path / "state"
    try:
        yield path
    finally:
        stop_by_pidfiles(path)


@dataclass
class Started:
    state_dir: Path
    port: int
    first: Run
    second: Run

    def password(self) -> str:
        return (self.state_dir / "mongodb.password").read_text().strip()

    def client(self, **kwargs) -> pymongo.MongoClient:
        return pymongo.MongoClient("127.0.0.1", self.port, serverSelectionTimeoutMS=5000, **kwargs)


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Started]:
    """master.yml run twice (cold, then warm) on a fresh state dir and a free port."""
    state = tmp_path_factory.mktemp("mongodb-role") / "state"
    port = free_port()
    try:
        first = playbook("master.yml", state, "-e", f"hyperopt_mongodb_port={port}", "-v")
        assert first.rc == 0, first.output
        second = playbook("master.yml", state, "-e", f"hyperopt_mongodb_port={port}")
        assert second.rc == 0, second.output
        yield Started(state, port, first, second)
    finally:
        stop_by_pidfiles(state)


def test_server_answers_ping_on_the_chosen_port(started: Started) -> None:
    with started.client() as client:
        assert client.admin.command("ping")["ok"] == 1
    info = (started.state_dir / "server.json").read_text()
    assert f'"port": {started.port}' in info


def test_unauthenticated_write_is_refused_and_the_password_is_accepted(started: Started) -> None:
    with started.client() as anonymous, pytest.raises(OperationFailure):
        anonymous.hyperopt.jobs.insert_one({"x": 1})
    with started.client(username="pyhoptcluster", password="wrong", authSource="hyperopt") as wrong:
        with pytest.raises(OperationFailure):
            wrong.hyperopt.jobs.insert_one({"x": 1})
    with started.client(username="pyhoptcluster", password=started.password(), authSource="hyperopt") as user:
        assert user.hyperopt.jobs.insert_one({"x": 1}).acknowledged


def test_password_file_is_private_and_never_shown(started: Started) -> None:
    path = started.state_dir / "mongodb.password"
    assert path.stat().st_mode & 0o777 == 0o600
    assert (started.state_dir / "server.json").stat().st_mode & 0o777 == 0o600
    password = started.password()
    assert re.fullmatch(r"[A-Za-z0-9]{32}", password)
    assert password not in started.first.output
    assert password not in started.second.output
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            assert password.encode() not in cmdline.read_bytes(), f"password in {cmdline}"
        except OSError:
            continue


def test_second_run_changes_nothing(started: Started) -> None:
    assert started.first.changed > 0
    assert started.second.changed == 0, started.second.output


def wait_dead(pid: int, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid), f"pid {pid} still alive after {seconds} s"


def test_drift_is_repaired_on_the_next_run(started: Started) -> None:
    """The warm path trusts one probe; what it finds different from what the role would make is fixed."""
    password_file = started.state_dir / "mongodb.password"
    server_json = started.state_dir / "server.json"
    config = started.state_dir / "secantusd.toml"
    rendered = config.read_text()
    password = started.password()
    password_file.chmod(0o644)
    server_json.chmod(0o644)
    assert "standalone = false" in rendered
    config.write_text(rendered.replace("standalone = false", "standalone = true"))
    pid = running_pid(started.state_dir)
    assert pid is not None

    run = playbook("master.yml", started.state_dir, "-e", f"hyperopt_mongodb_port={started.port}")
    assert run.rc == 0, run.output
    assert run.changed > 0
    assert password_file.stat().st_mode & 0o777 == 0o600
    assert server_json.stat().st_mode & 0o777 == 0o600
    assert config.read_text() == rendered
    assert started.password() == password
    # The edited config restarted the server with the rendered one.
    assert not alive(pid)
    restarted = running_pid(started.state_dir)
    assert restarted is not None

    again = playbook("master.yml", started.state_dir, "-e", f"hyperopt_mongodb_port={started.port}")
    assert again.rc == 0, again.output
    assert again.changed == 0, again.output
    assert running_pid(started.state_dir) == restarted


def test_a_stopped_server_is_started_again(started: Started) -> None:
    # (A server that dies is restarted by supervisord itself: tests/integration/test_supervision.py.)
    pid = running_pid(started.state_dir)
    assert pid is not None
    Supervisor(started.state_dir / "supervisor").ctl("stop", "hyperopt-mongodb")
    wait_dead(pid)

    run = playbook("master.yml", started.state_dir, "-e", f"hyperopt_mongodb_port={started.port}")
    assert run.rc == 0, run.output
    assert run.changed > 0
    assert running_pid(started.state_dir) not in (None, pid)
    with started.client(username="pyhoptcluster", password=started.password(), authSource="hyperopt") as user:
        assert user.hyperopt.command("ping")["ok"] == 1


def test_taken_single_port_fails_with_port_in_use(state_dir: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        run = playbook("master.yml", state_dir, "-e", f"hyperopt_mongodb_port={port}")
    assert run.rc != 0
    assert "PortInUseError" in run.output
    assert running_pid(state_dir) is None


def test_port_list_with_none_free_fails_with_no_ports_left(state_dir: Path) -> None:
    with socket.socket() as one, socket.socket() as two:
        for s in (one, two):
            s.bind(("127.0.0.1", 0))
            s.listen()
        ports = f"{one.getsockname()[1]},{two.getsockname()[1]}"
        run = playbook("master.yml", state_dir, "-e", f"hyperopt_mongodb_port={ports}")
    assert run.rc != 0
    assert "NoPortsLeftError" in run.output


def test_uncreatable_dbpath_fails_with_permission_error(state_dir: Path, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("")
    run = playbook(
        "master.yml",
        state_dir,
        "-e",
        f"hyperopt_mongodb_dbpath={not_a_dir}/db",
        "-e",
        f"hyperopt_mongodb_port={free_port()}",
    )
    assert run.rc != 0
    assert f"PermissionError: cannot create hyperopt_mongodb_dbpath {not_a_dir}/db" in run.output


def test_argument_specs_reject_a_port_that_is_no_int(state_dir: Path) -> None:
    run = playbook("master.yml", state_dir, "-e", "hyperopt_mongodb_port=notaport")
    assert run.rc != 0
    assert "hyperopt_mongodb_port" in run.output
    assert "Validation of arguments failed" in run.output
    assert not state_dir.exists()


def test_check_mode_on_a_fresh_state_dir_does_not_fail(state_dir: Path) -> None:
    run = playbook("master.yml", state_dir, "--check", "-e", f"hyperopt_mongodb_port={free_port()}")
    assert run.rc == 0, run.output
    assert not state_dir.exists()


def test_server_not_answering_in_time_fails_with_master_start_error_and_is_stopped(
    state_dir: Path, tmp_path: Path
) -> None:
    silent = tmp_path / "silent-mongod"
    silent.write_text(
        "#!/bin/sh\n# listens nowhere, answers nothing\ntrap 'exit 0' TERM\nwhile :; do sleep 0.2; done\n"
    )
    silent.chmod(0o755)
    run = playbook(
        "master.yml",
        state_dir,
        "-e",
        "hyperopt_mongodb_install_method=binary",
        "-e",
        f"hyperopt_mongodb_binary={silent}",
        "-e",
        "hyperopt_mongodb_auth=false",
        "-e",
        "hyperopt_mongodb_start_timeout=1",
        "-e",
        f"hyperopt_mongodb_port={free_port()}",
    )
    assert run.rc != 0
    assert "MasterStartError" in run.output
    assert running_pid(state_dir) is None


def test_auth_false_from_the_command_line_runs_without_auth(state_dir: Path) -> None:
    # -e gives the string "false", which is truthy in Jinja: the role must read it as a bool.
    port = free_port()
    run = playbook(
        "master.yml", state_dir, "-e", "hyperopt_mongodb_auth=false", "-e", f"hyperopt_mongodb_port={port}"
    )
    assert run.rc == 0, run.output
    info = json.loads((state_dir / "server.json").read_text())
    assert info["auth"] is False
    assert info["username"] is None and info["password_file"] is None
    assert not (state_dir / "mongodb.password").exists()
    with pymongo.MongoClient("127.0.0.1", port, serverSelectionTimeoutMS=5000) as anonymous:
        assert anonymous.hyperopt.jobs.insert_one({"x": 1}).acknowledged


def test_facts_before_any_start_say_to_run_site_first(state_dir: Path) -> None:
    run = playbook("publish.yml", state_dir)
    assert run.rc != 0
    assert "run site.yml first" in run.output


def test_stop_leaves_no_server_and_frees_the_port_and_start_comes_back(started: Started) -> None:
    pid = running_pid(started.state_dir)
    assert pid is not None
    password = started.password()

    supervisord = Supervisor(started.state_dir / "supervisor").supervisord_pid()
    assert supervisord is not None
    stop = playbook("stop.yml", started.state_dir, "--tags", "hyperopt_mongodb")
    assert stop.rc == 0, stop.output
    assert not alive(pid)
    assert running_pid(started.state_dir) is None
    wait_dead(supervisord)  # nothing else ran in it
    assert port_is_free(started.port)
    assert (started.state_dir / "db").is_dir()

    # the user is provisioned once (SecantusDB: offline, into the stopped data directory); the marker
    # it leaves is what makes a restart skip it
    marker = started.state_dir / "db" / ".pyhoptcluster-auth"
    provisioned = marker.stat().st_mtime_ns
    again = playbook("master.yml", started.state_dir, "-e", f"hyperopt_mongodb_port={started.port}")
    assert again.rc == 0, again.output
    assert started.password() == password
    assert marker.stat().st_mtime_ns == provisioned
    assert not (started.state_dir / "mongod-bootstrap.log").exists()  # no no-auth server ever ran
    with started.client(username="pyhoptcluster", password=password, authSource="hyperopt") as user:
        assert user.hyperopt.jobs.count_documents({}) >= 0


# -- install method auto (the default): what the last run used, repo for real clusters, else a mongod
# on the PATH, else SecantusDB ------------------------------------------------------------------------


def _mongod_on_path(tmp_path: Path) -> tuple[Path, Path]:
    """A directory holding a "mongod" that records that it ran and answers nothing; and its record."""
    bindir, ran = tmp_path / "bin", tmp_path / "mongod-ran"
    bindir.mkdir()
    fake = bindir / "mongod"
    fake.write_text(f"#!/bin/sh\necho \"$0\" > {ran}\ntrap 'exit 0' TERM\nwhile :; do sleep 0.2; done\n")
    fake.chmod(0o755)
    return bindir, ran


def test_auto_runs_a_mongod_found_on_the_path_for_a_local_cluster(state_dir: Path, tmp_path: Path) -> None:
    bindir, ran = _mongod_on_path(tmp_path)
    run = playbook(
        "master.yml",
        state_dir,
        *("-e", "hyperopt_mongodb_auth=false", "-e", "hyperopt_mongodb_start_timeout=1"),
        *("-e", f"hyperopt_mongodb_port={free_port()}"),
        path_prefix=bindir,
    )
    assert run.rc != 0 and "MasterStartError" in run.output  # it was that mongod, which answers nothing
    assert ran.read_text().strip() == str(bindir / "mongod")
    assert running_pid(state_dir) is None


def test_auto_keeps_the_server_the_data_was_made_with(started: Started, tmp_path: Path) -> None:
    # inventories/local leaves the method to auto: no mongod on this PATH, so SecantusDB, recorded
    assert json.loads((started.state_dir / "server.json").read_text())["install_method"] == "pip"
    before = running_pid(started.state_dir)
    bindir, ran = _mongod_on_path(tmp_path)
    run = playbook(
        "master.yml", started.state_dir, "-e", f"hyperopt_mongodb_port={started.port}", path_prefix=bindir
    )
    assert run.rc == 0, run.output
    assert run.changed == 0 and running_pid(started.state_dir) == before and not ran.exists()


@pytest.mark.parametrize(
    ("workers", "previous", "which", "expected"),
    [
        ({"node9": {"ansible_host": "10.9.9.9"}}, "", "/usr/bin/mongod", "repo"),  # a real cluster
        ({"localhost": {"ansible_connection": "local"}}, "", "/opt/m/bin/mongod", "binary"),
        ({"localhost": {"ansible_connection": "local"}}, "", "", "pip"),
        ({"node9": {"ansible_host": "10.9.9.9"}}, "pip", "", "pip"),  # the data's server is kept
    ],
)
def test_auto_rule(tmp_path: Path, workers: dict, previous: str, which: str, expected: str) -> None:
    """The role's rule (vars/main.yml) as Ansible evaluates it, for the probe's findings given."""
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        json.dumps(
            {
                "all": {
                    "children": {
                        "hyperopt_master": {"hosts": {"localhost": {"ansible_connection": "local"}}},
                        "hyperopt_workers": {"hosts": workers},
                    }
                }
            }
        )
    )
    play = tmp_path / "rule.yml"
    role = ROOT / "roles" / "hyperopt_mongodb"
    probe = {"previous": {"install_method": previous} if previous else {}, "which": which}
    play.write_text(
        json.dumps(
            [
                {
                    "hosts": "hyperopt_master",
                    "gather_facts": False,
                    "vars_files": [str(role / "defaults" / "main.yml"), str(role / "vars" / "main.yml")],
                    "vars": {"__hyperopt_mongodb_probe": probe},
                    "tasks": [{"ansible.builtin.debug": {"msg": "method={{ __hyperopt_mongodb_method }}"}}],
                }
            ]
        )
    )
    env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0"}
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), str(play), "-i", str(inventory)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"msg: method={expected}\n" in proc.stdout, proc.stdout
