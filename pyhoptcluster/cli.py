"""``pyhoptcluster up|down|report|dashboard``: the facade from a shell."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .cluster import HyperoptCluster
from .errors import PyhoptclusterError
from .report import commands as report_commands
from .state import JOBS_COLLECTION


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyhoptcluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start (or re-converge) the server and the workers; print the URLs")
    down = sub.add_parser("down", help="stop every worker and the server (data and password are kept)")
    for cmd in (up, down):
        cmd.add_argument("-i", "--inventory", required=True, help="Ansible inventory file or directory")
        cmd.add_argument("--debug", action="store_true", help="show ansible-playbook's output live")
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
    report_commands.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command in report_commands.COMMANDS:
            return report_commands.run(args)
        if args.command == "down":
            cluster = HyperoptCluster(args.inventory)
            cluster.cleanup()
            print("cluster stopped (data and password kept)")
            return 0
        cluster = HyperoptCluster(args.inventory, dbname=args.dbname, dbpath=args.dbpath)
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
    except (PyhoptclusterError, ValueError, PermissionError, ImportError, RuntimeError) as exc:
        print(f"pyhoptcluster: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
