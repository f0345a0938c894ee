"""playbooks/workers.yml on a local inventory: supervisord programs, secrets, idempotence, scale down, stop.

The server is the ``mongo_server_auth`` fixture (a real SecantusDB with auth); the test writes the
server state the ``hyperopt_mongodb`` role keeps (``server.json``, ``mongodb.password``) into a tmp
``hyperopt_mongodb_state_dir``, so workers.yml's first play loads it with ``tasks_from: facts``.
The tests run in file order and share one module-scoped set-up; the workers are programs of the
supervisord in ``<hyperopt_mongodb_state_dir>/supervisor``, killed with it (by pid) at teardown.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from local_cluster import SUPERVISOR_VENV, Supervisor

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
WORKER_EXE = "pyhoptcluster-worker"


@dataclass
class Run:
    rc: int
    output: str
    seconds: float

    @property
    def changed(self) -> int:
        m = re.search(r"^localhost\s+:.*\bchanged=(\d+)", self.output, re.M)
        assert m, self.output
        return int(m.group(1))


@dataclass
class Setup:
    tmp: Path
    inventory: Path
    state_dir: Path
    venv: Path
    password: str
    extravars: dict
    timings: dict = field(default_factory=dict)
    cold_output: str = ""

    def run(self, playbook: str | Path, *args: str, **extravars) -> Run:
        cmd = [str(PLAYBOOK), str(playbook), "-i", str(self.inventory)]
        cmd += ["-e", json.dumps({**self.extravars, **extravars}), *args]
        env = dict(
            os.environ,
            ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
            ANSIBLE_COLLECTIONS_PATH=str(REPO / "collections"),
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_DEPRECATION_WARNINGS="0",
        )
        start = time.monotonic()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        return Run(proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start)

    def workers(self, playbook: str = "playbooks/workers.yml", *args: str, **extravars) -> Run:
        run = self.run(REPO / playbook, *args, **extravars)
        assert run.rc == 0, run.output
        return run

    @property
    def supervisor(self) -> Supervisor:
        return Supervisor(Path(self.extravars["hyperopt_mongodb_state_dir"]) / "supervisor")

    def pids(self) -> dict[int, int]:
        """Instance id -> pid of the running workers (as supervisord says, and checked by command line)."""
        result = {}
        for name, pid in self.supervisor.pids().items():
            if name.startswith("hyperopt-worker-") and is_our_worker(pid, self.state_dir):
                result[int(name.removeprefix("hyperopt-worker-"))] = pid
        return dict(sorted(result.items()))


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def is_our_worker(pid: int, state_dir: Path) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    line = cmdline(pid)
    return stat[stat.rfind(")") + 2] not in "ZX" and WORKER_EXE in line and str(state_dir) in line


def all_cmdlines() -> str:
    return "\n".join(cmdline(int(p)) for p in os.listdir("/proc") if p.isdigit())


@pytest.fixture(scope="module")
def setup(mongo_server_auth, tmp_path_factory) -> Setup:
    server = mongo_server_auth
    tmp = tmp_path_factory.mktemp("worker-role")
    mongo_state = tmp / "mongodb-state"
    mongo_state.mkdir(mode=0o700)
    password_file = mongo_state / "mongodb.password"
    password_file.write_text(server.password + "\n")
    password_file.chmod(0o600)
    server_json = mongo_state / "server.json"
    server_json.write_text(
        json.dumps(
            {
                "host": server.host,
                "port": server.port,
                "dbname": server.dbname,
                "username": server.username,
                "password_file": str(password_file),
                # the deprecated name of supervisor, as a server.json of an older run has it
                "service_manager": "daemon",
                "auth": True,
            }
        )
    )
    server_json.chmod(0o600)
    inventory = tmp / "inventory.yml"
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inventory.write_text(
        json.dumps(
            {
                "all": {
                    "children": {
                        "hyperopt_master": {"hosts": {"localhost": local}},
                        "hyperopt_workers": {"hosts": {"localhost": local}},
                    }
                }
            }
        )
    )
    state_dir = tmp / "worker-state"
    s = Setup(
        tmp=tmp,
        inventory=inventory,
        state_dir=state_dir,
        venv=tmp / "worker-venv",
        password=server.password,
        extravars={
            "hyperopt_mongodb_state_dir": str(mongo_state),
            "hyperopt_worker_state_dir": str(state_dir),
            "hyperopt_worker_venv": str(tmp / "worker-venv"),
            "hyperopt_worker_wheel_cache_dir": str(tmp / "wheels"),
            # the deprecated name of supervisor: existing inventories keep working
            "hyperopt_worker_service_manager": "daemon",
            "hyperopt_supervisor_venv": str(SUPERVISOR_VENV),
            "hyperopt_worker_count": 3,
        },
    )
    try:
        yield s
    finally:
        s.supervisor.kill()
        print("\nworkers.yml timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in s.timings.items()))


def test_cold_run_starts_three_worker_programs(setup):
    run = setup.workers("playbooks/workers.yml", "--diff")
    setup.timings["cold"] = run.seconds
    setup.cold_output = run.output
    pids = setup.pids()
    assert sorted(pids) == [1, 2, 3]
    for instance, pid in pids.items():
        assert cmdline(pid).endswith(f"--instance {instance} "), cmdline(pid)
    deadline = time.monotonic() + 30
    logs = [setup.state_dir / f"worker-{i}.log" for i in (1, 2, 3)]
    while not all("connected" in log.read_text() for log in logs) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all("connected" in log.read_text() for log in logs), [log.read_text() for log in logs]


def _tree_bytes(root: Path) -> int:
    return sum(p.lstat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def test_cold_run_on_the_control_node_reuses_its_packages(setup):
    """hyperopt_worker_base_python auto: the workers run on the control node under supervisord as this
    user, so their venv reuses the packages of the Python that runs Ansible instead of installing its own
    hyperopt, numpy, scipy (~250 MB); the project's wheel is still the venv's own."""
    site = setup.venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    pth = site / "_pyhoptcluster_base.pth"
    assert pth.is_file(), sorted(p.name for p in site.iterdir())
    assert not (site / "hyperopt").exists() and not (site / "scipy").exists()
    assert (site / "pyhoptcluster").is_dir()
    where = subprocess.run(
        [
            str(setup.venv / "bin/python"),
            "-c",
            "import hyperopt as h, pyhoptcluster as p; print(h.__file__, p.__file__)",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=setup.tmp,  # not the checkout, whose pyhoptcluster/ "python -c" would import first
    ).stdout.split()
    assert where[0].startswith(sys.prefix), where
    assert where[1].startswith(str(site)), where
    assert _tree_bytes(setup.venv) < 60 * 2**20, _tree_bytes(setup.venv)


def test_config_file_is_0600_and_the_password_stays_secret(setup):
    config = setup.state_dir / "worker.conf"
    assert config.stat().st_mode & 0o777 == 0o600
    assert "HYPEROPT_WORKER_MONGO_URL=mongo://" in config.read_text()
    assert setup.password in config.read_text()
    assert setup.password not in all_cmdlines()
    for log in setup.state_dir.glob("worker-*.log"):
        assert setup.password not in log.read_text()
    # a config change shown with --diff -v: no_log must hide the file and the lookup
    run = setup.workers("playbooks/workers.yml", "--diff", "-v", hyperopt_worker_poll_interval=0.2)
    setup.extravars["hyperopt_worker_poll_interval"] = 0.2
    assert run.changed >= 1
    assert setup.password not in run.output
    assert setup.password not in setup.cold_output


def test_second_run_changes_nothing(setup):
    before = setup.pids()
    run = setup.workers()
    setup.timings["warm"] = run.seconds
    assert run.changed == 0, run.output
    assert setup.pids() == before


def test_check_mode_on_a_running_cluster_changes_nothing(setup):
    run = setup.workers("playbooks/workers.yml", "--check")
    assert run.changed == 0, run.output


def test_config_change_restarts_the_running_workers(setup):
    before = setup.pids()
    run = setup.workers(hyperopt_worker_poll_interval=0.05)
    after = setup.pids()
    assert run.changed >= 1
    assert sorted(after) == [1, 2, 3]
    assert all(after[i] != before[i] for i in after)
    assert "HYPEROPT_WORKER_POLL_INTERVAL=0.05" in (setup.state_dir / "worker.conf").read_text()
    setup.extravars["hyperopt_worker_poll_interval"] = 0.05


def test_scale_down_stops_the_extra_workers_and_leaves_the_first_alone(setup):
    before = setup.pids()
    run = setup.workers(hyperopt_worker_count=1)
    setup.timings["scale 3->1"] = run.seconds
    assert setup.pids() == {1: before[1]}
    assert not any(is_our_worker(before[i], setup.state_dir) for i in (2, 3))


def test_count_below_one_fails_clearly(setup):
    run = setup.run(REPO / "playbooks/workers.yml", hyperopt_worker_count=0)
    assert run.rc != 0
    assert "hyperopt_worker_count must be an integer >= 1" in run.output


def test_stop_leaves_no_worker_process(setup):
    playbook = setup.tmp / "stop-workers.yml"
    playbook.write_text(
        json.dumps(
            [
                {
                    "name": "Stop the workers",
                    "hosts": "hyperopt_workers",
                    "gather_facts": False,
                    "tasks": [
                        {
                            "name": "Stop every instance",
                            "ansible.builtin.include_role": {
                                "name": "pyhoptcluster.cluster.hyperopt_worker",
                                "tasks_from": "stop",
                            },
                        }
                    ],
                }
            ]
        )
    )
    survivors = setup.pids()
    run = setup.run(playbook)
    setup.timings["stop"] = run.seconds
    assert run.rc == 0, run.output
    assert setup.pids() == {}
    assert not any(is_our_worker(pid, setup.state_dir) for pid in survivors.values())
    assert not list((setup.supervisor.dir / "programs").glob("hyperopt-worker-*.conf"))
    assert setup.supervisor.supervisord_pid() is None, "nothing else ran in that supervisord"


def test_config_change_in_a_configure_only_run_starts_no_worker(setup):
    """The restart handler only restarts what ran before; after a stop it must start nothing."""
    run = setup.workers(
        "playbooks/workers.yml", "--tags", "hyperopt_worker_configure", hyperopt_worker_poll_interval=0.3
    )
    assert run.changed >= 1
    assert setup.pids() == {}


def test_readme_table_lists_every_default():
    """tests/unit/test_argument_specs.py keeps defaults and argument_specs in step; this the README."""
    role = REPO / "roles" / "hyperopt_worker"
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text())
    readme = (role / "README.md").read_text()
    assert [name for name in defaults if f"| `{name}` |" not in readme] == []
