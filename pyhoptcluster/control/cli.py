"""The ``pyhoptcluster`` command: the facade from a shell (up, down, scale, status, report, ...)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import pymongo.errors

from pyhoptcluster import __version__
from pyhoptcluster.control.cluster import HyperoptCluster
from pyhoptcluster.control.drain import result_lines as drain_lines
from pyhoptcluster.control.experiments import status_text
from pyhoptcluster.control.experiments import table as experiment_table
from pyhoptcluster.control.report import commands as report_commands
from pyhoptcluster.control.state import JOBS_COLLECTION
from pyhoptcluster.errors import PyhoptclusterError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyhoptcluster", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start (or re-converge) the server and the workers; print the URLs")
    down = sub.add_parser("down", help="stop every worker and the server (data and password are kept)")
    for cmd in (up, down):
        cmd.add_argument("-i", "--inventory", required=True, help="Ansible inventory file or directory")
        cmd.add_argument("--debug", action="store_true", help="show ansible-playbook's output live")
        cmd.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    up.add_argument("--workers", type=int, default=None, help="worker count (default: one per worker host)")
    up.add_argument(
        "--port",
        type=int,
        nargs="+",
        default=None,
        help="server port, or several: the first free one is used",
    )
    up.add_argument("--dbname", default="hyperopt", help="experiment database (default: hyperopt)")
    up.add_argument("--dbpath", default=None, help="server data directory on the control node")
    up.add_argument("--show-password", action="store_true", help="print the URLs with the password")
    _add_operations(sub)
    report_commands.add_parsers(sub)
    return parser


def _add_operations(sub: argparse._SubParsersAction) -> None:
    check = sub.add_parser(
        "check", help="compare the workers' Python/hyperopt/cloudpickle/pymongo with this one's"
    )
    check.add_argument(
        "--require",
        nargs="+",
        default=[],
        metavar="PKG",
        help="packages (import names) every worker must import",
    )
    scale = sub.add_parser("scale", help="run N workers on the running cluster (the others keep running)")
    scale.add_argument("count", type=int, help="worker count of the whole cluster")
    scale.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    status = sub.add_parser("status", help="the server, every worker and every experiment, from the database")
    status.add_argument("--json", action="store_true", help="one JSON object: server, workers, experiments")
    exps = sub.add_parser("experiments", help="list the experiments: trials by state, best loss")
    delete = sub.add_parser("delete", help="delete one experiment's trials and attachments")
    delete.add_argument("--exp-key", required=True, help="the experiment to delete")
    delete.add_argument("--yes", action="store_true", help="do not ask")
    logs = sub.add_parser("logs", help="the server's and every worker's log lines, merged, oldest first")
    logs.add_argument("--host", default=None, help="only this inventory host's lines")
    logs.add_argument("--instance", type=int, default=None, help="only this worker instance's lines")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines (Ctrl-C stops)")
    logs.add_argument("--since", default=None, help="only lines since: 90s, 10m, 2h, 1d, or 2026-12-03 09:30")
    logs.add_argument(
        "-n", "--lines", type=int, default=200, help="at most this many lines per log (default 200)"
    )
    drain = sub.add_parser(
        "drain", help="let workers finish their running trials, take no new one, and exit (not restarted)"
    )
    drain.add_argument("--host", default=None, help="only this inventory host's workers (default: all)")
    drain.add_argument(
        "--timeout", type=float, default=None, metavar="S", help="wait at most S seconds (default: no limit)"
    )
    drain.add_argument("--no-wait", action="store_true", help="only ask the workers; do not wait for them")
    drain.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    rotate = sub.add_parser(
        "rotate-password",
        help="give the experiment user a new password; workers restart with it, no trial is lost",
    )
    rotate.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    for cmd in (check, scale, status, exps, delete, logs, drain, rotate):
        cmd.add_argument("-i", "--inventory", required=True, help="Ansible inventory file or directory")


OPERATIONS = ("check", "scale", "status", "experiments", "delete", "logs", "drain", "rotate-password")


def _operation(args: argparse.Namespace) -> int:
    cluster = HyperoptCluster(args.inventory)
    if args.command == "check":
        result = cluster.check(require=args.require)
        print(result.table())
        return 0 if result.ok else 1
    if args.command == "scale":
        placed = HyperoptCluster(args.inventory, progress=not args.quiet).scale(args.count)
        for host, ids in placed.items():
            print(f"workers on {host}: {', '.join(map(str, ids)) or '-'}")
        return 0
    if args.command == "status":
        result = cluster.status()
        print(json.dumps(result.to_dict(), indent=2) if args.json else status_text(result))
        return 0 if result.server.up else 1
    if args.command == "logs":
        return _logs(cluster, args)
    if args.command == "rotate-password":
        rotated = HyperoptCluster(args.inventory, progress=not args.quiet)
        rotated.rotate_password()
        print(f"new password in {rotated.info.password_file}; running fmin drivers pick it up from there")
        return 0
    if args.command == "drain":
        return _drain(HyperoptCluster(args.inventory, progress=not (args.quiet or args.no_wait)), args)
    if args.command == "experiments":
        found = cluster.experiments()
        print(experiment_table(found) if found else "no experiments")
        return 0
    n = cluster.count_trials(args.exp_key)
    if n == 0:
        print(f"no trials of experiment {args.exp_key!r}", file=sys.stderr)
        return 1
    if not args.yes:
        if not sys.stdin.isatty():
            print(
                f"pyhoptcluster: refusing to delete {n} trials of experiment {args.exp_key!r} without "
                "asking: no terminal to ask on; pass --yes",
                file=sys.stderr,
            )
            return 2
        answer = input(f"Delete {n} trials of experiment {args.exp_key}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 1
    deleted = cluster.delete_experiment(args.exp_key)
    print(f"deleted {deleted} trials of experiment {args.exp_key}")
    return 0


def _logs(cluster: HyperoptCluster, args: argparse.Namespace) -> int:
    where = {"host": args.host, "instance": args.instance, "since": args.since, "lines": args.lines}
    if not args.follow:
        for line in cluster.logs(**where):
            print(line)
        return 0
    try:
        for line in cluster.follow_logs(**where):
            print(line, flush=True)
    except KeyboardInterrupt:
        pass
    return 0


def _drain(cluster: HyperoptCluster, args: argparse.Namespace) -> int:
    try:
        result = cluster.drain(host=args.host, timeout=args.timeout, wait=not args.no_wait)
    except KeyboardInterrupt:
        print("stopped waiting; the drain stays requested: the workers exit after their trials")
        return 1
    for line in drain_lines(result):
        print(line)
    return 0 if result.complete or not result.waited else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command in OPERATIONS:
            return _operation(args)
        if args.command in report_commands.COMMANDS:
            return report_commands.run(args)
        if args.command == "down":
            cluster = HyperoptCluster(args.inventory, progress=not args.quiet)
            cluster.cleanup()
            print("cluster stopped (data and password kept)")
            return 0
        cluster = HyperoptCluster(
            args.inventory, dbname=args.dbname, dbpath=args.dbpath, progress=not args.quiet
        )
        port = args.port[0] if args.port and len(args.port) == 1 else args.port
        cluster.start(worker_count=args.workers, master_port=port, debug=args.debug)
        info = cluster.info
        show = args.show_password
        print(f"mongo_url:        {info.mongo_url(with_password=show)}")
        print(f"mongo_trial_url:  {info.mongo_url(with_password=show, collection=JOBS_COLLECTION)}")
        print(f"password_file:    {info.password_file}")
        for host, ids in info.workers.items():
            print(f"workers on {host}: {', '.join(map(str, ids)) or '-'}")
        return 0
    except (
        PyhoptclusterError,
        ValueError,
        PermissionError,
        ImportError,
        RuntimeError,
        pymongo.errors.PyMongoError,
    ) as exc:
        print(f"pyhoptcluster: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
