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
The predecessor (lazycluster 0.2.4) measured on 3 SSH hosts: start(worker_count=6) 10.1 s,
cleanup() 2.4 s (figures recorded by the team, not measured here); the table prints the ratio
against those.

The cold, warm and cleanup times against the host count are written to ``bench/out/deploy_hosts.png``
(bench/curves.py), with lazycluster's figures as baselines.

Usage (root, needs the test bed): ``python bench/deploy.py [--hosts 1 3 6] [--name bench]
[--subnet 10.231.4]``. Hosts are always torn down at the end.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml
from curves import write_curve  # bench/ is sys.path[0] when run as a script
from dispatch import run_fmin, worker_span

from pyhoptcluster import HyperoptCluster

ROOT = Path(__file__).resolve().parent.parent
LAZYCLUSTER_START_S = 10.1
LAZYCLUSTER_CLEANUP_S = 2.4
OBJECTIVE_S = 0.2
TRIALS_PER_WORKER = 10
CURVES = (("cold start", "cold"), ("warm start", "warm"), ("cleanup", "cleanup"))


def slow_objective(x: float) -> float:  # pickled by value (this is __main__)
    time.sleep(OBJECTIVE_S)
    return x * x


def utilisation(url: str, workers: int, exp_key: str, max_queue_len: int, poll: float | None = None) -> float:
    n = TRIALS_PER_WORKER * workers
    trials, _ = run_fmin(url, exp_key, n, max_queue_len, fn=slow_objective, poll_interval=poll)
    done, span = worker_span(trials)
    trials.delete_all()
    return done * OBJECTIVE_S / (workers * span)


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


def bench_hosts(testbed_mod, n: int, name: str, subnet: str) -> dict[str, float]:
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
        cluster = None
        return {
            "boot": boot,
            "cold": cold,
            "warm": warm,
            "util": util,
            "util_p": util_p,
            "util_q": util_q,
            "cleanup": down,
        }
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
    args = parser.parse_args()
    testbed_mod = _load_testbed()
    rows = []
    for n in args.hosts:
        r = bench_hosts(testbed_mod, n, args.name, args.subnet)
        rows.append((n, r))
        print(f"{n} host(s): {r}", flush=True)
    print()
    print(
        f"{'hosts':>5} {'workers':>7} {'boot s':>7} {'cold s':>7} {'warm s':>7}"
        f" {'util q=w':>8} {'q=w p=0.2':>9} {'q=5w':>5} {'cleanup s':>9}"
        f" {'warm/lazy':>9} {'cleanup/lazy':>12}"
    )
    for n, r in rows:
        print(
            f"{n:5d} {2 * n:7d} {r['boot']:7.1f} {r['cold']:7.1f} {r['warm']:7.1f}"
            f" {r['util']:8.0%} {r['util_p']:9.0%} {r['util_q']:5.0%} {r['cleanup']:9.1f}"
            f" {r['warm'] / LAZYCLUSTER_START_S:9.0%} {r['cleanup'] / LAZYCLUSTER_CLEANUP_S:12.0%}"
        )
    write_curve(
        "deploy_hosts",
        "start() and cleanup() against hosts (2 workers per host, systemd test hosts)",
        "hosts",
        "seconds",
        {
            k: [(n, r[key]) for n, r in rows]
            for k, key in (("cold start", "cold"), ("warm start", "warm"), ("cleanup", "cleanup"))
        },
        baselines={
            "lazycluster start, 3 hosts": LAZYCLUSTER_START_S,
            "lazycluster cleanup": LAZYCLUSTER_CLEANUP_S,
        },
    )


if __name__ == "__main__":
    main()
