"""The report and the dashboard against a real server, real workers, a real fmin and a real browser.

The server runs with auth (``mongo_server_auth``); the CLI gets the URL without the password and
``--password-file``, so the password is never on a command line. Chromium is Debian's, headless,
driven by Selenium through Debian's chromedriver (tests/integration/browser.py). Screenshots are
saved under ``$PYHOPTCLUSTER_TEST_SCREENSHOTS`` (default: the test's tmp dir) to be looked at.
"""

from __future__ import annotations

import html.parser
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from browser import chromium, console_errors, distinct_colours, pixel_stddev, plots_drawn, wait_until
from local_cluster import make_local_inventory
from report_run import run_experiment, run_fmin, start_workers
from worker_procs import Workers

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
CLI = BIN / "pyhoptcluster"
FINISHED = "finished"


def screenshot_dir(tmp: Path) -> Path:
    path = Path(os.environ.get("PYHOPTCLUSTER_TEST_SCREENSHOTS") or tmp)
    path.mkdir(parents=True, exist_ok=True)
    return path


class _Refs(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.refs += [
            f"{tag} {k}={v}"
            for k, v in attrs
            if k in ("src", "href") and v and not v.startswith(("#", "data:"))
        ]


def external_refs(text: str) -> list[str]:
    """Every src/href of the page's elements (script bodies are not parsed as tags)."""
    parser = _Refs()
    parser.feed(text)
    return parser.refs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=timeout, cwd="/")


@pytest.fixture(scope="module")
def server(mongo_server_auth):
    return mongo_server_auth


@pytest.fixture(scope="module")
def password_file(server, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("secret") / "mongodb.password"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(server.password + "\n")
    return path


@pytest.fixture(scope="module")
def url(server) -> str:
    """The experiments' URL without the password (it comes from --password-file)."""
    return f"mongo://{server.username}@{server.host}:{server.port}/{server.dbname}/jobs"


@pytest.fixture(scope="module")
def finished(server, tmp_path_factory):
    """A finished 40-trial experiment on 3 real workers, one of which froze and was reclaimed."""
    tmp = tmp_path_factory.mktemp("finished")
    pool = Workers(tmp)
    try:
        with server.client() as client:
            jobs, _ = run_experiment(pool, tmp, server.trials_url(), client, FINISHED, n=40, n_workers=3)
    finally:
        pool.close()
    assert any(d.get("reclaims") for d in jobs), "the frozen worker's trial was not reclaimed"
    return jobs


def test_report_from_url_renders_every_plot_in_chromium_and_holds_no_password(
    finished, url, password_file, server, tmp_path
):
    out = tmp_path / "report.html"
    t0 = time.monotonic()
    proc = cli(
        "report", "--url", url, "--password-file", str(password_file), "--exp-key", FINISHED, "-o", str(out)
    )
    took = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    assert "40 trials" in proc.stdout
    print(f"report of 40 trials by the CLI: {took:.1f} s")
    page = out.read_text()
    assert server.password not in page and server.password not in proc.stdout + proc.stderr
    assert external_refs(page) == []  # plotly.js is inlined: the file works offline
    for name in ("loss_per_trial", "best_over_time", "params", "timeline", "states"):
        assert f'id="plot-{name}"' in page
    # hp.choice is shown by its options (the space was read although `objectives` is not importable there)
    assert '"rbf"' in page and '"poly"' in page
    assert "poly model diverged" in page  # an error trial's message
    assert "no heartbeat from" in page  # the reclaimed trial

    with chromium(tmp_path / "profile") as driver:
        driver.get(out.as_uri())
        wait_until(lambda: plots_drawn(driver) >= 5, 60, "the report's five plots")
        png = driver.get_screenshot_as_png()
        errors = console_errors(driver)
    (screenshot_dir(tmp_path) / "report.png").write_bytes(png)
    assert errors == []
    assert pixel_stddev(png) > 10 and distinct_colours(png) > 200, "the screenshot looks blank"


def test_report_png_dir_gets_one_nonblank_png_per_figure(finished, url, password_file, tmp_path):
    pngs = tmp_path / "png"
    proc = cli(
        "report", "--url", url, "--password-file", str(password_file), "--exp-key", FINISHED,
        "-o", str(tmp_path / "r.html"), "--png", str(pngs),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in pngs.glob("*.png"))
    assert names == ["best_over_time.png", "loss_per_trial.png", "params.png", "states.png", "timeline.png"]
    for p in pngs.glob("*.png"):
        assert pixel_stddev(p.read_bytes()) > 5, f"{p.name} looks blank"
    shutil.copy(pngs / "timeline.png", screenshot_dir(tmp_path) / "report-timeline.png")


def test_report_of_an_unknown_exp_key_names_the_experiments_there(finished, url, password_file, tmp_path):
    proc = cli(
        "report", "--url", url, "--password-file", str(password_file), "--exp-key", "nope", "-o", "x.html"
    )
    assert proc.returncode == 2
    assert "no trials with exp_key 'nope'" in proc.stderr and repr(FINISHED) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_report_when_no_server_answers_says_so_without_traceback(tmp_path):
    dead = f"mongo://127.0.0.1:{free_port()}/hyperopt/jobs"
    proc = cli("report", "--url", dead, "--exp-key", "x", "-o", str(tmp_path / "x.html"))
    assert proc.returncode == 2
    assert "no server answers at 127.0.0.1" in proc.stderr and "Traceback" not in proc.stderr


def _record_server(inv, host: str, port: int, password: str) -> None:
    """What the server role leaves on the control node at a start: server.json and the password file."""
    inv.state_dir.mkdir(parents=True, exist_ok=True)
    pw = inv.state_dir / "mongodb.password"
    pw.write_text(password + "\n")
    pw.chmod(0o600)
    info = {
        "host": host,
        "port": port,
        "dbname": "hyperopt",
        "username": "pyhoptcluster",
        "password_file": str(pw),
        "auth": True,
        "service_manager": "daemon",
    }
    (inv.state_dir / "server.json").write_text(json.dumps(info))
    (inv.state_dir / "server.json").chmod(0o600)


def test_report_from_inventory_reads_the_recorded_server_and_starts_nothing(finished, server, tmp_path):
    inv = make_local_inventory(tmp_path)
    _record_server(inv, server.host, server.port, server.password)
    out = tmp_path / "inv-report.html"
    proc = cli("report", "-i", str(inv.path), "--exp-key", FINISHED, "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and server.password not in out.read_text()
    assert inv.pids() == {}  # no server, no worker started for it


def test_report_from_inventory_of_a_stopped_cluster_says_to_run_up(tmp_path):
    inv = make_local_inventory(tmp_path)
    _record_server(inv, "127.0.0.1", free_port(), "unused-password")
    proc = cli("report", "-i", str(inv.path), "--exp-key", FINISHED, "-o", str(tmp_path / "x.html"))
    assert proc.returncode == 2
    assert f"run `pyhoptcluster up -i {inv.path}` first" in proc.stderr and "--start-server" in proc.stderr
    assert "Traceback" not in proc.stderr


def _get(port: int, path: str, host: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except urllib.error.URLError:  # not listening (yet)
        return 0, ""


def _done_count(driver) -> int:
    text = driver.execute_script(
        "const e = document.getElementById('fact-states'); return e ? e.textContent : ''"
    )
    for part in text.split(","):
        words = part.split()
        if len(words) == 2 and words[1] == "done":
            return int(words[0])
    return 0


def test_dashboard_during_a_real_fmin_shows_changing_numbers_and_never_the_password(
    finished, server, url, password_file, tmp_path
):
    port, exp_key = free_port(), "live"
    log = tmp_path / "dashboard.log"
    with open(log, "wb") as out:
        dash = subprocess.Popen(
            [str(CLI), "dashboard", "--url", url, "--password-file", str(password_file),
             "--port", str(port), "--refresh", "0.5"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    pool = Workers(tmp_path)
    driver_error: list[BaseException] = []

    def drive() -> None:
        try:
            run_fmin(server.trials_url(), exp_key, 30, 2)
        except BaseException as exc:
            driver_error.append(exc)

    fmin_thread = threading.Thread(target=drive, daemon=True)
    try:
        wait_until(
            lambda: _get(port, "/api/status")[0] == 200 if dash.poll() is None else True, 120, "the dashboard"
        )
        assert dash.poll() is None, log.read_text()
        fmin_thread.start()  # it queues trials; they run once the workers are there
        seen: list[int] = []
        with chromium(tmp_path / "profile") as driver:
            driver.get(f"http://127.0.0.1:{port}/?exp_key={exp_key}")
            wait_until(lambda: plots_drawn(driver) >= 5, 60, "the dashboard's five plots")
            start_workers(pool, tmp_path, server.trials_url(), exp_key, 2, None, sleep=0.3)
            while fmin_thread.is_alive() and len(seen) < 400:
                seen.append(_done_count(driver))
                time.sleep(0.25)
            fmin_thread.join(120)
            assert not fmin_thread.is_alive() and not driver_error, driver_error
            wait_until(
                lambda: _done_count(driver) + _error_count(driver) == 30, 30, "all 30 trials shown finished"
            )
            server_state = driver.find_element("id", "status-server").text
            hosts_table = driver.find_element("id", "table-hosts").text
            page = driver.page_source
            png = driver.get_screenshot_as_png()
            errors = console_errors(driver)
        (screenshot_dir(tmp_path) / "dashboard.png").write_bytes(png)
        rising = sorted(set(seen))
        assert len(rising) >= 3, f"the done count hardly changed while trials finished: {seen}"
        assert seen == sorted(seen), "the done count went down"
        # workers per host, from the workers collection: this test's two among them
        assert server_state == "up" and all(f" {w.pid} " in hosts_table for w in pool.started)
        assert errors == []
        assert pixel_stddev(png) > 10
        assert server.password not in page
        bodies = [
            _get(port, p)[1]
            for p in ("/", "/api/status", "/api/experiments", f"/api/experiment?exp_key={exp_key}")
        ]
        assert all(server.password not in b for b in bodies)
        assert json.loads(bodies[2])["experiments"][0]["exp_key"] in (exp_key, FINISHED)
        assert _get(port, "/api/status", host="evil.example:80")[0] == 400  # no DNS rebinding
        assert server.password.encode() not in Path(f"/proc/{dash.pid}/cmdline").read_bytes()
    finally:
        pool.close()
        if dash.poll() is None:
            dash.send_signal(signal.SIGINT)
            try:
                dash.wait(timeout=20)
            except subprocess.TimeoutExpired:
                dash.kill()
                dash.wait(timeout=10)
    assert server.password not in log.read_text()


def _error_count(driver) -> int:
    text = driver.execute_script(
        "const e = document.getElementById('fact-states'); return e ? e.textContent : ''"
    )
    words = [part.split() for part in text.split(",")]
    return sum(int(w[0]) for w in words if len(w) == 2 and w[1] in ("error", "failed"))


def test_report_with_start_server_starts_the_stopped_server_alone_and_stops_it_again(tmp_path):
    inv = make_local_inventory(tmp_path)
    port = free_port()
    inv.state_dir.mkdir(parents=True)
    info = {
        "host": "127.0.0.1",
        "port": port,
        "dbname": "hyperopt",
        "username": "pyhoptcluster",
        "password_file": str(inv.state_dir / "mongodb.password"),
        "auth": True,
        "service_manager": "daemon",
    }
    (inv.state_dir / "server.json").write_text(json.dumps(info))  # as a stopped cluster leaves them
    (inv.state_dir / "mongodb.password").write_text("a-password-the-role-keeps\n")
    (inv.state_dir / "mongodb.password").chmod(0o600)
    proc = cli(
        "report", "-i", str(inv.path), "--exp-key", "x", "-o", str(tmp_path / "x.html"), "--start-server"
    )
    # the role started a server with auth on that port (the experiment is not there: a fresh database)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no trials with exp_key 'x' in mongo://pyhoptcluster@127.0.0.1" in proc.stderr
    assert inv.pids() == {}, "the server started for the report was not stopped again"
    assert not list(inv.worker_state_dir.rglob("*.pid"))  # no worker was started
