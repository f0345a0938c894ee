"""Deploy benchmark: cold and warm bring-up, and teardown, over real systemd test hosts.

For 1, 3 and 6 hosts (systemd-nspawn hosts from tests/hosts/testbed.py, 2 workers per host), from
Python through the facade:
  * cold start():   fresh hosts (no venv, no units) and a fresh server state dir;
  * warm start():   the same call again, nothing to change;
  * utilisation:    an fmin of 10 trials per worker of a 0.2 s objective through MongoTrials:
                    objective seconds / (workers x the workers' span from the first reservation to
                    the last result), the project's target being >= 90 % for 6 workers over 3 hosts.
                    hyperopt's driver tops the queue up once per second (its fixed poll), so this is
                    bounded by max_queue_len / (workers / 0.2 s): measured with max_queue_len =
                    workers ("util q=w"), the same with the driver polling every 0.2 s
                    (trials.poll_interval_secs, pyhoptcluster.compat.driver: "q=w p=0.2"), and with enough
                    queued for one 1 s poll, 5 x workers ("q=5w");
  * cleanup():      every unit on every host and the server stopped.
Side by side with the peer, lazycluster 0.2.4, on the same hosts in the same run (``--peer-hosts``, 3 by
default; bench/peer_lazycluster.py in a venv of lazycluster 0.2.4 + hyperopt 0.3.0 + pymongo 3.13, which
this script makes in ~/.cache/pyhoptcluster and installs on the hosts from a wheelhouse): 2 workers per
host, 10 trials per worker of the 0.2 s objective, TPE, max_queue_len = workers; ``start()`` after
``cleanup()`` (a notebook's daily cycle), ``cleanup()``, fmin trials/s and utilisation. The ratios in
that table are pyhoptcluster over lazycluster from this run.

The cold, warm and cleanup times against the host count are written to ``bench/out/deploy_hosts.png``
(bench/curves.py), with lazycluster's figures as baselines.

Usage (root, needs the test bed): ``python bench/deploy.py [--hosts 1 3 6] [--name bench]
[--subnet 10.231.4]``. Hosts are always torn down at the end.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from curves import write_curve  # bench/ is sys.path[0] when run as a script
from dispatch import free_port, run_fmin, worker_span
from hyperopt import tpe

from pyhoptcluster import HyperoptCluster

ROOT = Path(__file__).resolve().parent.parent
PEER_VENV = Path("~/.cache/pyhoptcluster/lazycluster-venv").expanduser()
PEER_WHEELHOUSE = Path("~/.cache/pyhoptcluster/lazycluster-wheelhouse").expanduser()
PEER_PACKAGES = ["lazycluster==0.2.4", "hyperopt==0.3.0", "pymongo==3.13.0"]
PEER_HOST_VENV = "/opt/lazycluster-peer"
OBJECTIVE_S = 0.2
TRIALS_PER_WORKER = 10
CURVES = (("cold start", "cold"), ("warm start", "warm"), ("cleanup", "cleanup"))
SECANTUSD = Path("~/.local/share/pyhoptcluster/secantusdb-venv/bin/secantusd-py").expanduser()


def slow_objective(x: float) -> float:  # pickled by value (this is __main__)
    time.sleep(OBJECTIVE_S)
    return x * x


def utilisation(url: str, workers: int, exp_key: str, max_queue_len: int, poll: float | None = None) -> float:
    n = TRIALS_PER_WORKER * workers
    trials, _ = run_fmin(url, exp_key, n, max_queue_len, fn=slow_objective, poll_interval=poll)
    done, span = worker_span(trials)
    trials.delete_all()
    return done * OBJECTIVE_S / (workers * span)


def side_by_side(url: str, workers: int) -> tuple[float, float]:
    """The peer's scenario through pyhoptcluster: (fmin trials/s, utilisation)."""
    n = TRIALS_PER_WORKER * workers
    trials, wall = run_fmin(url, "bench-side-by-side", n, workers, fn=slow_objective, algo=tpe.suggest)
    done, span = worker_span(trials)
    trials.delete_all()
    return done / wall, done * OBJECTIVE_S / (workers * span)


def _prepare_peer(info) -> None:
    """lazycluster's venv here, and on every host python, hyperopt-mongo-worker (pymongo 3.13) and a
    resolvable localhost, from a wheelhouse (the hosts have no index)."""
    if not (PEER_VENV / "bin/python").exists():
        subprocess.run([sys.executable.replace(sys.prefix, sys.base_prefix), "-m", "venv", str(PEER_VENV)],
                       check=True)  # fmt: skip
        subprocess.run([str(PEER_VENV / "bin/pip"), "install", "-q", *PEER_PACKAGES], check=True)
    if not any(PEER_WHEELHOUSE.glob("pymongo-3.13*")):
        pip = [str(PEER_VENV / "bin/pip"), "download", "-q", "-d", str(PEER_WHEELHOUSE)]
        subprocess.run([*pip, *PEER_PACKAGES[1:]], check=True)
    packages = " ".join(PEER_PACKAGES[1:])
    script = (
        f"set -e; mkdir -p /tmp/peer-wheels && tar -C /tmp/peer-wheels -x;"
        f" [ -x {PEER_HOST_VENV}/bin/hyperopt-mongo-worker ] || {{ python3 -m venv {PEER_HOST_VENV} &&"
        f" {PEER_HOST_VENV}/bin/pip install -q --no-index --find-links /tmp/peer-wheels {packages}; }};"
        f" ln -sf {PEER_HOST_VENV}/bin/hyperopt-mongo-worker /usr/local/bin/hyperopt-mongo-worker;"
        " ln -sf /usr/bin/python3 /usr/local/bin/python;"
        " grep -qw localhost /etc/hosts || echo '127.0.0.1 localhost' >> /etc/hosts"
    )
    tar = subprocess.run(
        ["tar", "-C", str(PEER_WHEELHOUSE), "-c", "."], capture_output=True, check=True
    ).stdout
    procs = [subprocess.Popen(info.ssh_command(h, script), stdin=subprocess.PIPE) for h in info.hosts]
    for p in procs:
        p.communicate(tar, timeout=600)
        if p.returncode:
            raise RuntimeError(f"preparing a host for lazycluster failed: {p.args[-2]}")


def run_peer(info, workers: int) -> dict[str, float]:
    """lazycluster 0.2.4 on the hosts of ``info``: start, the side-by-side fmin, cleanup, start again."""
    _prepare_peer(info)
    bindir = Path(tempfile.mkdtemp(prefix="bench-peer-"))
    try:
        standin = bindir / "mongod"
        standin.write_text(
            f'#!/bin/sh\nexec {PEER_VENV}/bin/python {ROOT}/bench/peer_lazycluster.py mongod "$@"\n'
        )
        standin.chmod(0o755)
        env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", PEER_SECANTUSD=str(SECANTUSD))
        env.pop("PYTHONPATH", None)
        args = {"hosts": [f"root@{ip}" for ip in info.ips], "key": str(info.key_path), "workers": workers,
                "trials": TRIALS_PER_WORKER * workers, "objective": OBJECTIVE_S, "max_queue_len": workers,
                "port": free_port()}  # fmt: skip
        run = subprocess.run(
            [str(PEER_VENV / "bin/python"), str(ROOT / "bench/peer_lazycluster.py"), json.dumps(args)],
            cwd=bindir, env=env, capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        line = next((x for x in run.stdout.splitlines() if x.startswith("PEER ")), None)
        if line is None:
            raise RuntimeError(f"lazycluster run failed (rc {run.returncode}): {run.stderr[-3000:]}")
        return json.loads(line[5:])
    finally:
        subprocess.run([str(PEER_VENV / "bin/python"), str(ROOT / "bench/peer_lazycluster.py"), "mongod",
                        "--shutdown", f"--dbpath={bindir / 'None'}"], cwd=bindir, check=False)  # fmt: skip
        shutil.rmtree(bindir, ignore_errors=True)


def _load_testbed():  # tests/hosts is not a package
    spec = importlib.util.spec_from_file_location("pyhoptcluster_testbed", ROOT / "tests/hosts/testbed.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_hosts(testbed_mod, n: int, name: str, subnet: str, peer: bool = False) -> dict[str, float]:
    bed = testbed_mod.Testbed(name=name, hosts=n, subnet=subnet)
    t0 = time.perf_counter()
    info = bed.up(recreate=True)
    boot = time.perf_counter() - t0
    tmp = Path(tempfile.mkdtemp(prefix="bench-deploy-"))
    cluster = None  # set while a cluster may be running
    try:
        inventory = yaml.safe_load(Path(info.inventory_path).read_text())
        inventory["all"]["vars"]["hyperopt_mongodb_state_dir"] = str(tmp / "server")
        inventory["all"]["vars"]["hyperopt_mongodb_install_method"] = "pip"
        inventory["all"]["vars"]["hyperopt_mongodb_pip_venv"] = str(
            Path("~/.local/share/pyhoptcluster/secantusdb-venv").expanduser()
        )
        inv_path = tmp / "hosts.yml"
        inv_path.write_text(yaml.safe_dump(inventory))
        cluster = HyperoptCluster(str(inv_path))
        count = 2 * n
        cold = _timed(lambda: cluster.start(worker_count=count))
        placed = sum(len(ids) for ids in cluster.workers_per_host.values())
        assert placed == count, cluster.workers_per_host
        warm = _timed(lambda: cluster.start(worker_count=count))
        util = utilisation(cluster.mongo_trial_url, count, f"bench-deploy-{n}", count)
        util_p = utilisation(cluster.mongo_trial_url, count, f"bench-deploy-{n}-p", count, poll=0.2)
        queue_per_poll = round(count / OBJECTIVE_S)  # jobs the workers finish in one 1 s driver poll
        util_q = utilisation(cluster.mongo_trial_url, count, f"bench-deploy-{n}-q", queue_per_poll)
        down = _timed(cluster.cleanup)
        restart = _timed(lambda: cluster.start(worker_count=count))
        rate, util_tpe = side_by_side(cluster.mongo_trial_url, count)
        down_again = _timed(cluster.cleanup)
        cluster = None
        result = {
            "boot": boot,
            "cold": cold,
            "warm": warm,
            "util": util,
            "util_p": util_p,
            "util_q": util_q,
            "cleanup": down,
            "restart": restart,
            "cleanup_after_restart": down_again,
            "tpe_rate": rate,
            "tpe_util": util_tpe,
        }
        if peer:
            try:
                result["peer"] = run_peer(info, count)
            except Exception as exc:  # the peer failing must not lose this run's own figures
                print(f"lazycluster on {n} hosts failed: {exc}", file=sys.stderr, flush=True)
        return result
    finally:
        if cluster is not None:  # a failed or interrupted run: stop the server (its state dir goes below)
            try:
                cluster.cleanup()
            except Exception as exc:
                print(f"cleanup after a failed run: {exc}", file=sys.stderr)
        bed.down()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--hosts", type=int, nargs="+", default=[1, 3, 6])
    parser.add_argument("--name", default="bench")
    parser.add_argument("--subnet", default="10.231.4")
    parser.add_argument(
        "--peer-hosts", type=int, nargs="*", default=[3], help="host counts that also run lazycluster"
    )
    args = parser.parse_args()
    testbed_mod = _load_testbed()
    rows = []
    for n in args.hosts:
        r = bench_hosts(testbed_mod, n, args.name, args.subnet, peer=n in args.peer_hosts)
        rows.append((n, r))
        print(f"{n} host(s): {r}", flush=True)
    print()
    print(
        f"{'hosts':>5} {'workers':>7} {'boot s':>7} {'cold s':>7} {'warm s':>7}"
        f" {'util q=w':>8} {'q=w p=0.2':>9} {'q=5w':>5} {'cleanup s':>9}"
        f" {'restart s':>9} {'tpe t/s':>7} {'tpe util':>8}"
    )
    for n, r in rows:
        print(
            f"{n:5d} {2 * n:7d} {r['boot']:7.1f} {r['cold']:7.1f} {r['warm']:7.1f}"
            f" {r['util']:8.0%} {r['util_p']:9.0%} {r['util_q']:5.0%} {r['cleanup']:9.1f}"
            f" {r['restart']:9.1f} {r['tpe_rate']:7.2f} {r['tpe_util']:8.0%}"
        )
    peers = [(n, r) for n, r in rows if "peer" in r]
    for n, r in peers:
        p = r["peer"]
        print(
            f"\nside by side on {n} hosts, {2 * n} workers,"
            f" {TRIALS_PER_WORKER * 2 * n} trials of {OBJECTIVE_S} s, TPE:"
        )
        print(f"{'what':34} {'lazycluster':>11} {'pyhoptcluster':>13} {'ratio':>7}")
        for label, mine, theirs in (
            ("start() after cleanup() s", r["restart"], p["restart"]),
            ("first start() s (cold)", r["cold"], p["start"]),
            ("cleanup() s", r["cleanup_after_restart"], p["cleanup"]),
            ("fmin trials/s", r["tpe_rate"], p["trials_per_s"]),
            ("utilisation", r["tpe_util"], p["utilisation"]),
        ):
            print(f"{label:34} {theirs:11.2f} {mine:13.2f} {mine / theirs:7.2f}")
    write_curve(
        "deploy_hosts",
        "start() and cleanup() against hosts (2 workers per host, systemd test hosts)",
        "hosts",
        "seconds",
        {label: [(n, r[key]) for n, r in rows] for label, key in CURVES},
        baselines={
            f"lazycluster {k} ({n} hosts)": r["peer"][k] for n, r in peers for k in ("start", "cleanup")
        },
    )


if __name__ == "__main__":
    main()
