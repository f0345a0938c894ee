"""Installable anywhere: the wheel in a fresh venv, and the collection installed by ansible-galaxy, each
used from an empty directory outside the checkout (issue 8).

- The wheel: built from this checkout, installed with its dependencies into a new venv, then driven
  with a fresh ``HOME`` from an empty directory: the CLI on a path inventory, the facade on a dict
  inventory and on ``["localhost"]``, and a real ``fmin`` against the cluster. Nothing may come from the
  checkout: the package and the collection it runs are the venv's.
- The collection: ``ansible-galaxy collection build`` / ``install`` into an empty collections path,
  ``ansible-doc`` of every module and role (what Galaxy's importer checks), then
  ``ansible-playbook pyhoptcluster.cluster.site`` / ``stop`` and an ops team's own playbook with both
  roles, from an empty directory with no ansible.cfg.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import yaml
from local_cluster import ROOT, free_port, make_local_inventory, port_is_free, wait_gone

pytestmark = pytest.mark.integration

VENV_BIN = Path(sys.executable).parent
# pip's cache of this machine: the fresh HOME must not mean downloading everything again
PIP_CACHE = os.environ.get("PIP_CACHE_DIR") or str(Path.home() / ".cache" / "pip")


def _run(
    argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 900
) -> subprocess.CompletedProcess:
    done = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, (
        f"{argv} failed ({done.returncode}):\n{done.stdout[-6000:]}\n{done.stderr[-6000:]}"
    )
    return done


def _clean_env(path: str, home: Path) -> dict[str, str]:
    """A login-like environment: no venv, no PYTHONPATH, no ANSIBLE_* of the test run."""
    keep = {k: v for k, v in os.environ.items() if k in ("LANG", "LC_ALL", "TERM", "USER", "LOGNAME", "TZ")}
    return {
        **keep,
        "PATH": path,
        "HOME": str(home),
        "PIP_CACHE_DIR": PIP_CACHE,
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }


def _kill_supervisord(home: Path) -> None:
    """Whatever a failed test left of the fresh HOME's supervisord (it runs the server and workers)."""
    for pid_file in home.glob(".local/share/pyhoptcluster/**/supervisord.pid"):
        try:
            pid = int(pid_file.read_text().strip())
            os.kill(pid, signal.SIGTERM)
            wait_gone([pid], 20)
        except (ValueError, ProcessLookupError, PermissionError):
            pass


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(ROOT),
        ],
        ROOT,
        {**os.environ},
    )
    (found,) = out.glob("pyhoptcluster-*.whl")
    return found


def test_the_wheel_carries_the_collection_and_no_checkout_path(wheel: Path) -> None:
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    base = "pyhoptcluster/_collection/ansible_collections/pyhoptcluster/cluster/"
    for part in (
        "playbooks/site.yml",
        "playbooks/stop.yml",
        "roles/hyperopt_worker/tasks/main.yml",
        "roles/hyperopt_mongodb/tasks/main.yml",
        "plugins/modules/daemon.py",
        "meta/runtime.yml",
        "galaxy.yml",
        "ansible.cfg",
        "roles/hyperopt_worker/files/worker_wheel.py",
    ):
        assert base + part in names, part
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    texts = zipfile.ZipFile(wheel)
    for name in names:
        if name.startswith((base + "roles/", base + "playbooks/")) and name.endswith((".yml", ".j2")):
            text = texts.read(name).decode()
            assert "pyproject.toml" not in text, f"{name} points into a checkout"


def test_fresh_venv_runs_cli_dict_and_list_inventories_and_a_real_fmin(wheel: Path, tmp_path: Path) -> None:
    venv, work = tmp_path / "venv", tmp_path / "empty"
    # a short HOME: supervisord's socket lives under it and a unix socket path holds 107 bytes
    home = Path(tempfile.mkdtemp(prefix="ph-home-", dir="/tmp"))
    work.mkdir()
    _run([sys.base_prefix + "/bin/python3", "-m", "venv", str(venv)], tmp_path, {"PATH": os.environ["PATH"]})
    env = _clean_env(f"{venv}/bin:/usr/local/bin:/usr/bin:/bin", home)
    _run([f"{venv}/bin/python", "-m", "pip", "install", "-q", str(wheel)], work, env, timeout=1200)

    # the package and the collection it runs are the venv's, not the checkout's
    where = _run(
        [
            f"{venv}/bin/python",
            "-c",
            "import pyhoptcluster; from pyhoptcluster.control import runner; "
            "print(pyhoptcluster.__file__); print(runner.ansible_dir()); print(runner.collections_dir())",
        ],
        work,
        env,
    ).stdout.split()
    assert all(line.startswith(str(venv)) for line in where), where
    assert _run([f"{venv}/bin/pyhoptcluster", "--version"], work, env).stdout.split() == [
        "pyhoptcluster",
        "0.1.0",
    ]

    port = free_port()
    inventory = {
        "all": {
            "children": {
                "hyperopt_master": {"hosts": {"localhost": {}}},
                "hyperopt_workers": {"hosts": {"localhost": {}}},
            },
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                "hyperopt_mongodb_port": port,
                "hyperopt_worker_venv": str(home / "worker-venv"),
                "hyperopt_worker_state_dir": str(home / "workers"),
            },
        }
    }
    inv_file = work / "hosts.yml"
    inv_file.write_text(yaml.safe_dump(inventory))
    try:
        # the CLI on a path inventory: the URLs and the placement
        up = _run(
            [f"{venv}/bin/pyhoptcluster", "up", "-i", str(inv_file), "--workers", "2", "-q"],
            work,
            env,
            timeout=1200,
        ).stdout
        assert f"127.0.0.1:{port}/hyperopt/jobs" in up, up
        assert not port_is_free(port)
        # the facade on a dict inventory attaches to it (a restarted notebook) and runs a real fmin
        script = textwrap.dedent(
            """
            import json, sys
            from hyperopt import fmin, hp, rand, STATUS_OK
            from hyperopt.mongoexp import MongoTrials
            from pyhoptcluster import HyperoptCluster

            def objective(x):
                import os
                return {"loss": (x - 1.0) ** 2, "status": STATUS_OK, "pid": os.getpid()}

            cluster = HyperoptCluster(json.loads(sys.argv[1]))
            status = cluster.status()
            trials = MongoTrials(cluster.mongo_trial_url, exp_key="install-test")
            fmin(objective, hp.uniform("x", -3, 3), algo=rand.suggest, max_evals=12, trials=trials,
                 max_queue_len=2, show_progressbar=False)
            print(json.dumps({"placed": sorted((w.host, w.instance) for w in status.workers),
                              "ok": sum(r["status"] == "ok" for r in trials.results),
                              "pids": sorted({r["pid"] for r in trials.results})}))
            """
        )
        (work / "drive.py").write_text(script)
        out = _run([f"{venv}/bin/python", "drive.py", json.dumps(inventory)], work, env, timeout=600).stdout
        result = json.loads(out.strip().splitlines()[-1])
        assert result["placed"] == [["localhost", 1], ["localhost", 2]]
        assert result["ok"] == 12
        assert len(result["pids"]) >= 1
        _run([f"{venv}/bin/pyhoptcluster", "down", "-i", str(inv_file)], work, env)
        assert port_is_free(port)

        # the README's first example: a list of host names, the embedded server
        listed = textwrap.dedent(
            """
            from pyhoptcluster import HyperoptCluster
            cluster = HyperoptCluster(["localhost"])
            cluster.start(worker_count=1)
            print(cluster.mongo_trial_url.split("@")[-1])
            cluster.cleanup()
            """
        )
        (work / "listed.py").write_text(listed)
        url = (
            _run([f"{venv}/bin/python", "listed.py"], work, env, timeout=1200).stdout.strip().splitlines()[-1]
        )
        assert re.fullmatch(r"127\.0\.0\.1:\d+/hyperopt/jobs", url), url
        server = json.loads((home / ".local/share/pyhoptcluster/server.json").read_text())
        assert server["install_method"] == "pip"  # no mongod on this machine's PATH: SecantusDB
    finally:
        subprocess.run(
            [f"{venv}/bin/pyhoptcluster", "down", "-i", str(inv_file)],
            cwd=work,
            env=env,
            capture_output=True,
            timeout=300,
            check=False,
        )
        _kill_supervisord(home)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def installed_collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("collection")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}  # and cwd has no ansible.cfg
    _run(
        [str(VENV_BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(tmp), str(ROOT)],
        tmp,
        env,
    )
    (tarball,) = tmp.glob("pyhoptcluster-cluster-*.tar.gz")
    _run(
        [str(VENV_BIN / "ansible-galaxy"), "collection", "install", "-p", str(tmp / "colls"), str(tarball)],
        tmp,
        env,
    )
    return tmp / "colls"


def _ansible_env(collections: Path, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_COLLECTIONS_PATH=str(collections), ANSIBLE_HOST_KEY_CHECKING="False")
    env["PATH"] = f"{VENV_BIN}:{env['PATH']}"
    return env


def test_galaxy_style_check_every_module_and_role_has_docs(
    installed_collection: Path, tmp_path: Path
) -> None:
    root = installed_collection / "ansible_collections" / "pyhoptcluster" / "cluster"
    manifest = json.loads((root / "MANIFEST.json").read_text())
    assert manifest["collection_info"]["version"] == "0.1.0"
    assert not (root / "pyproject.toml").exists() and not (root / "tests").exists()
    env = _ansible_env(installed_collection, tmp_path)
    modules = sorted(p.stem for p in (root / "plugins" / "modules").glob("*.py"))
    assert "daemon" in modules and "log_read" in modules
    out = _run(
        [
            str(VENV_BIN / "ansible-doc"),
            "-t",
            "module",
            "--json",
            *(f"pyhoptcluster.cluster.{m}" for m in modules),
        ],
        tmp_path,
        env,
    ).stdout
    docs = json.loads(out)
    for module in modules:
        assert docs[f"pyhoptcluster.cluster.{module}"]["doc"]["short_description"], module
    for role in ("hyperopt_mongodb", "hyperopt_worker", "hyperopt_supervisor"):
        out = _run(
            [str(VENV_BIN / "ansible-doc"), "-t", "role", "--json", f"pyhoptcluster.cluster.{role}"],
            tmp_path,
            env,
        ).stdout
        assert json.loads(out)[f"pyhoptcluster.cluster.{role}"]["entry_points"]["main"], role


def test_installed_collection_site_stop_and_an_ops_playbook_from_outside_the_repo(
    installed_collection: Path, tmp_path: Path
) -> None:
    work = tmp_path / "ops"
    work.mkdir()
    port = free_port()
    local = make_local_inventory(tmp_path, hyperopt_mongodb_port=port, hyperopt_worker_count=2)
    env = _ansible_env(installed_collection, tmp_path)
    playbook = [str(VENV_BIN / "ansible-playbook"), "-i", str(local.path)]
    try:
        site = _run([*playbook, "pyhoptcluster.cluster.site"], work, env).stdout
        # the run says where the cluster is, without the password
        assert re.search(
            rf"mongo_trial_url: mongo://pyhoptcluster:\*\*\*@127\.0\.0\.1:{port}/hyperopt/jobs", site
        ), site
        assert "placement:       localhost runs workers 1,2" in site, site
        assert not port_is_free(port)
        again = _run([*playbook, "pyhoptcluster.cluster.site"], work, env).stdout
        assert re.search(r"localhost\s*:\s*ok=\d+\s+changed=0\s", again), again[-3000:]
        _run([*playbook, "pyhoptcluster.cluster.stop"], work, env)
        assert port_is_free(port)

        # an ops team's playbook: both roles by their FQCN, nothing else of the project
        ops = [
            {
                "name": "Server",
                "hosts": "hyperopt_master",
                "gather_facts": False,
                "roles": [{"role": "pyhoptcluster.cluster.hyperopt_mongodb"}],
            },
            {
                "name": "Workers",
                "hosts": "hyperopt_workers",
                "gather_facts": False,
                "roles": [
                    {"role": "pyhoptcluster.cluster.hyperopt_worker", "vars": {"hyperopt_worker_count": 1}}
                ],
                "post_tasks": [
                    {
                        "name": "Show the workers",
                        "ansible.builtin.debug": {"msg": "instances {{ hyperopt_worker_instances }}"},
                    }
                ],
            },
        ]
        (work / "ops.yml").write_text(yaml.safe_dump(ops, sort_keys=False))
        out = _run([*playbook, "ops.yml"], work, env).stdout
        assert "instances [1]" in out, out
        assert not port_is_free(port)
        _run([*playbook, "pyhoptcluster.cluster.stop"], work, env)
        assert port_is_free(port)
    finally:
        subprocess.run(
            [*playbook, "pyhoptcluster.cluster.stop"],
            cwd=work,
            env=env,
            capture_output=True,
            timeout=300,
            check=False,
        )
