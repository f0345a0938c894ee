"""Report benchmark: how long ``pyhoptcluster report`` takes for an experiment of N trials.

The trials are the recorded real run (tests/unit/data/report_run.json) repeated with shifted trial
ids and times until there are N, inserted into a throwaway SecantusDB (no auth). Prints, per N:
reading the job documents, reducing them, building the figures, writing the HTML (and its size),
and the whole ``write_report`` call. Usage: ``python bench/report.py [--trials 100 1000 5000]``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import sys
import tempfile
import time
from pathlib import Path

from bson import ObjectId, json_util

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))


def synthetic(n: int) -> list[dict]:
    base = json_util.loads((ROOT / "tests" / "unit" / "data" / "report_run.json").read_text())["jobs"]
    span = max(d["refresh_time"] for d in base) - min(d["book_time"] for d in base if d.get("book_time"))
    out = []
    for i in range(n):
        doc = copy.deepcopy(base[i % len(base)])
        rnd = i // len(base)
        shift = (span + datetime.timedelta(seconds=1)) * rnd
        doc.update(_id=ObjectId(), tid=i, exp_key=f"bench{n}")
        for field in ("book_time", "refresh_time"):
            if doc.get(field):
                doc[field] += shift
        for r in doc.get("reclaims") or ():
            r["at"] += shift
        out.append(doc)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, nargs="+", default=[100, 1000, 5000])
    args = ap.parse_args()
    from conftest import SecantusdFactory, find_secantusd

    from pyhoptcluster.control.report import Source, html, write_report
    from pyhoptcluster.control.report.figures import all_figures
    from pyhoptcluster.control.report.reduce import experiment

    with tempfile.TemporaryDirectory() as d:
        factory = SecantusdFactory(find_secantusd(), Path(d))
        try:
            server = factory.start()
            with server.client() as client:
                for n in args.trials:
                    client.hyperopt.jobs.insert_many(synthetic(n))
            print(
                f"{'trials':>7} {'read':>7} {'reduce':>7} {'figures':>8} {'html':>7} {'MB':>5} {'report':>7}"
            )
            for n in args.trials:
                with Source(server.host, server.port, "hyperopt") as src:
                    key, out = f"bench{n}", Path(d) / f"r{n}.html"
                    t0 = time.perf_counter()
                    docs = src.job_docs(key)
                    t1 = time.perf_counter()
                    exp = experiment(key, docs, src.space(key), now=src.now())
                    t2 = time.perf_counter()
                    all_figures(exp)
                    t3 = time.perf_counter()
                    html.write(exp, out, where=src.shown)
                    t4 = time.perf_counter()
                    result = write_report(src, key, out)
                    mb = out.stat().st_size / 1e6
                    print(
                        f"{n:>7} {t1 - t0:>6.2f}s {t2 - t1:>6.2f}s {t3 - t2:>7.2f}s {t4 - t3:>6.2f}s "
                        f"{mb:>5.1f} {result.seconds:>6.2f}s"
                    )
        finally:
            factory.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
