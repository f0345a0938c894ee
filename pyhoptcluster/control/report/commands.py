"""``pyhoptcluster report`` and ``pyhoptcluster dashboard`` (hooked into :mod:`pyhoptcluster.control.cli`).

Where the data comes from, one of:

- ``-i INV``: the cluster of that inventory. Its server's address comes from ``server.json``, which
  the server role writes on the control node at every start (``playbooks/publish.yml`` reads it; no
  start, no workers touched), and the password from the role's 0600 file. So a report needs no
  ``up`` first, only a server that runs: when it is stopped, the message says to run
  ``pyhoptcluster up -i INV``, or ``--start-server`` starts the server alone for the report.
- ``--url mongo://user@host:port/db/jobs`` with ``--password-file FILE`` (or the URL in
  ``$PYHOPTCLUSTER_MONGO_URL``): any MongoTrials database. A password written into ``--url`` works
  but shows in ``ps``; a warning says so.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from pyhoptcluster.compat.mongourl import mask_url

COMMANDS = ("report", "dashboard")
URL_ENV = "PYHOPTCLUSTER_MONGO_URL"
EXTRA_HINT = "the report needs its extra: pip install 'pyhoptcluster[report]'"


def add_parsers(sub: Any) -> None:
    report = sub.add_parser("report", help="write an experiment's HTML report (plots, workers, errors)")
    dashboard = sub.add_parser("dashboard", help="serve a live dashboard of the cluster on 127.0.0.1")
    for cmd in (report, dashboard):
        where = cmd.add_mutually_exclusive_group()
        where.add_argument("-i", "--inventory", help="Ansible inventory of the cluster")
        where.add_argument(
            "--url",
            help=f"MongoTrials URL mongo://user@host:port/db/jobs instead of an inventory (or ${URL_ENV})",
        )
        cmd.add_argument("--password-file", help="file holding the --url user's password")
        cmd.add_argument("--debug", action="store_true", help="show ansible-playbook's output live")
    report.add_argument("--exp-key", required=True, help="the experiment (MongoTrials exp_key)")
    report.add_argument("-o", "--output", default="report.html", help="HTML file (default: report.html)")
    report.add_argument("--png", metavar="DIR", help="also write one PNG per figure into DIR")
    report.add_argument(
        "--start-server",
        action="store_true",
        help="(-i) if the cluster's server is stopped, start it alone for the report and stop it again",
    )
    dashboard.add_argument("--port", type=int, default=8050, help="port on 127.0.0.1 (default: 8050)")
    dashboard.add_argument("--refresh", type=float, default=2.0, help="seconds between updates (default 2)")


def _url_source(args: argparse.Namespace) -> Any:
    from pyhoptcluster.control.report.source import Source

    url = args.url or os.environ.get(URL_ENV)
    if not url:
        raise ValueError(f"give -i INVENTORY or --url mongo://user@host:port/db/jobs (or set ${URL_ENV})")
    if args.url and mask_url(args.url) != args.url:
        print(
            "pyhoptcluster: warning: the password in --url is visible to every user (ps); "
            f"use --password-file or ${URL_ENV}",
            file=sys.stderr,
        )
    hint = "check the URL, or start the server"
    return Source.from_url(url, args.password_file, hint=hint)


def _report(args: argparse.Namespace) -> int:
    from pyhoptcluster.control.report import write_report

    if args.inventory:
        from pyhoptcluster.control.cluster import HyperoptCluster

        cluster = HyperoptCluster(args.inventory)
        path = cluster.report(args.exp_key, args.output, png_dir=args.png, start_server=args.start_server)
        print(f"report of {args.exp_key!r}: {path}")
        return 0
    with _url_source(args) as source:
        result = write_report(source, args.exp_key, args.output, args.png)
    print(f"report of {args.exp_key!r} ({result.trials} trials, {result.seconds:.1f} s): {result.path}")
    for png in result.pngs:
        print(f"  {png}")
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from pyhoptcluster.control.report.dashboard import serve
    from pyhoptcluster.control.report.source import Source

    if args.inventory:
        from pyhoptcluster.control.cluster import HyperoptCluster

        cluster = HyperoptCluster(args.inventory)
        hint = f"the cluster is stopped: run `pyhoptcluster up -i {args.inventory}`"
        source = Source.from_info(cluster.attach(debug=args.debug), hint=hint)
    else:
        source = _url_source(args)
    with source:
        serve(source, port=args.port, refresh=args.refresh)
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``report`` or ``dashboard``; errors are left to the caller's handler."""
    try:
        import plotly  # noqa: F401

        if args.command == "dashboard":
            import starlette  # noqa: F401
            import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"{EXTRA_HINT} ({exc.name} is missing)") from exc
    return _report(args) if args.command == "report" else _dashboard(args)
