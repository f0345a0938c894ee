"""The report's data reduction on the job documents of a real run.

``data/report_run.json`` was recorded by ``tests/integration/report_run.py`` (see its docstring): 60
trials of a mixed space on 3 real workers against SecantusDB; worker 3 froze itself on its first
trial (SIGSTOP), the sweep put that trial back in the queue and another worker ran it; 6 trials
raised in the objective.
"""

from __future__ import annotations

import copy
import datetime
import itertools
import subprocess
import sys
from pathlib import Path

import pytest
from bson import json_util
from hyperopt import Domain, hp

from pyhoptcluster.control.report import reduce
from pyhoptcluster.control.report.reduce import ParamInfo
from pyhoptcluster.control.report.source import space_of

DATA = Path(__file__).with_name("data") / "report_run.json"
SPACE = {
    "x": ParamInfo("x", "uniform"),
    "lr": ParamInfo("lr", "loguniform"),
    "kind": ParamInfo("kind", "randint", ("linear", "rbf", "poly")),
    "depth": ParamInfo("depth", "quniform"),
}


@pytest.fixture(scope="module")
def run() -> dict:
    return json_util.loads(DATA.read_text())


@pytest.fixture(scope="module")
def exp(run) -> reduce.Experiment:
    return reduce.experiment("recorded", run["jobs"], SPACE)


def test_best_so_far_never_rises_and_ends_at_the_smallest_loss(run, exp):
    losses = [d["result"]["loss"] for d in run["jobs"] if d["result"].get("status") == "ok"]
    best = exp.best
    assert len(best.losses) == len(losses) == 54
    assert all(b <= a for a, b in itertools.pairwise(best.best_by_tid))
    assert best.best_by_tid[-1] == best.best_by_time[-1] == best.best_loss == min(losses)
    assert best.times == sorted(best.times)
    winner = next(d for d in run["jobs"] if d["tid"] == best.best_tid)
    assert winner["result"]["loss"] == min(losses)


def test_summary_names_the_best_trial_with_choice_labels(run, exp):
    s = exp.summary
    winner = next(d for d in run["jobs"] if d["tid"] == s.best_tid)
    assert s.trials == 60 and s.workers == 3
    assert s.best_params["kind"] == SPACE["kind"].choices[winner["misc"]["vals"]["kind"][0]]
    assert s.best_params["x"] == winner["misc"]["vals"]["x"][0]


def test_timeline_has_one_bar_per_finished_trial_on_its_workers_row(run, exp):
    tl = exp.timeline
    finished = [d for d in run["jobs"] if d.get("refresh_time") and d.get("owner")]
    assert len(tl.segments) == len(finished) == 60
    by_tid = {s.tid: s for s in tl.segments}
    for doc in finished:
        host, instance, _pid = doc["owner"].split(":")
        seg = by_tid[doc["tid"]]
        assert seg.worker == f"{host}:{instance}"
        assert seg.start == doc["book_time"] and seg.end == doc["refresh_time"]
    assert tl.start == min(d["book_time"] for d in finished)
    assert tl.end == max(d["refresh_time"] for d in finished)


def test_a_worker_runs_one_trial_at_a_time(exp):
    for worker in exp.timeline.workers:
        mine = sorted((s for s in exp.timeline.segments if s.worker == worker), key=lambda s: s.start)
        assert all(a.end <= b.start for a, b in itertools.pairwise(mine))


def test_utilisation_is_busy_time_over_wall_time(run, exp):
    use, wall = exp.utilisation, exp.timeline.wall_seconds
    assert use.wall_seconds == wall > 0
    for row in use.workers:
        busy = sum(
            (d["refresh_time"] - d["book_time"]).total_seconds()
            for d in run["jobs"]
            if d.get("owner") and reduce.worker_name(d["owner"]) == row.worker and d.get("refresh_time")
        )
        assert row.busy_seconds == pytest.approx(busy)
        assert row.percent == pytest.approx(100 * busy / wall)
    total = sum(r.busy_seconds for r in use.workers)
    assert use.overall_percent == pytest.approx(100 * total / (wall * 3))
    frozen = next(r for r in use.workers if r.trials == 0)  # the worker that froze on its first trial
    assert frozen.percent == 0.0


def test_states_count_every_trial_and_keep_the_error_messages(exp):
    st = exp.states
    assert sum(st.counts.values()) == 60
    assert st.counts["done"] == 54 and st.counts["error"] == 6
    assert len(st.errors) == 6
    assert all(t.error.startswith("ValueError: poly model diverged at x=") for t in st.errors)


def test_reclaimed_trial_is_listed_as_requeued_with_the_silent_worker(run, exp):
    (trial,) = exp.states.requeued
    doc = next(d for d in run["jobs"] if d.get("reclaims"))
    assert trial.tid == doc["tid"] and trial.attempts == 1 and trial.state == "done"
    (lost,) = exp.timeline.lost
    assert lost.worker == reduce.worker_name(doc["reclaims"][0]["owner"]) and lost.tid == trial.tid
    assert lost.worker != trial.worker  # another worker ran it in the end
    assert "no heartbeat from" in lost.reason


def test_running_trial_is_busy_until_now_and_new_ones_are_not_on_the_timeline(run):
    docs = copy.deepcopy(run["jobs"])
    docs[-1].update(state=1, refresh_time=None, result={"status": "new"})
    docs[-2].update(state=0, owner=None, book_time=None, refresh_time=None, result={"status": "new"})
    now = docs[-1]["book_time"] + datetime.timedelta(seconds=5)
    exp = reduce.experiment("recorded", docs, SPACE, now=now)
    running = next(s for s in exp.timeline.segments if s.tid == docs[-1]["tid"])
    assert running.state == "running" and running.end == now
    assert docs[-2]["tid"] not in {s.tid for s in exp.timeline.segments}
    assert exp.states.counts["running"] == 1 and exp.states.counts["new"] == 1


def test_choice_parameter_is_categorical_by_its_options_and_loguniform_on_a_log_axis(exp):
    series = {p.label: p for p in exp.params}
    assert set(series) == {"x", "lr", "kind", "depth"}
    kind = series["kind"]
    assert kind.categorical and kind.categories == ["linear", "rbf", "poly"]
    assert set(kind.values) <= {"linear", "rbf", "poly"}
    assert series["lr"].log_scale and not series["x"].log_scale and not series["x"].categorical
    assert len(series["x"].values) == len(series["x"].losses) == 54


def test_without_the_space_a_choice_shows_its_index(run):
    exp = reduce.experiment("recorded", run["jobs"])
    assert {p.label: p.categorical for p in exp.params}["kind"] is False
    assert exp.summary.best_params["kind"] in (0, 1, 2)


def test_space_of_a_domain_gives_choice_options_and_distributions():
    space = {
        "x": hp.uniform("x", -5, 5),
        "lr": hp.loguniform("lr", -7, 0),
        "kind": hp.choice("kind", ["linear", {"c": hp.uniform("c", 0, 1)}, None]),
    }
    found = space_of(Domain(lambda p: 0.0, space))
    assert found["kind"].choices == ("linear", "option 1", "None")
    assert found["lr"].dist == "loguniform" and found["x"].dist == "uniform" and found["c"].choices is None


def test_empty_experiment_reduces_to_zeros():
    exp = reduce.experiment("none", [])
    assert exp.summary.trials == 0 and exp.summary.best_loss is None and exp.utilisation.overall_percent == 0


def test_report_html_is_one_file_with_every_figure_and_plotly_inlined(exp, tmp_path):
    from pyhoptcluster.control.report import html

    out = html.write(exp, tmp_path / "r.html", where="mongo://pyhoptcluster@127.0.0.1:1/hyperopt/jobs")
    text = out.read_text()
    assert text.count('class="plotly-graph-div"') == 5
    assert "<script src=" not in text.split("</head>")[0]
    assert "poly model diverged" in text and "no heartbeat from" in text


def test_worker_side_imports_none_of_the_report_stack():
    code = "import sys, pyhoptcluster.worker.main; print('\\n'.join(sorted(sys.modules)))"
    loaded = set(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    assert not {
        m for m in loaded if m.split(".")[0] in ("plotly", "starlette", "uvicorn", "kaleido", "jinja2")
    }
    assert "pyhoptcluster.control.report" not in loaded
