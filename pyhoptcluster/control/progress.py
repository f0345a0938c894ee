"""Live progress of a playbook run, from ansible-runner's events.

``up``, ``down``, ``start()`` and ``cleanup()`` take from seconds (warm) to minutes (a cold start
installs the server and a venv per host). :func:`reporter` picks how to show it:

* a terminal or a notebook: one live line (rich) — the play, the task, hosts done of hosts started,
  the elapsed time;
* anything else (CI logs, a pipe, a file): one plain line per task that did something on a host,
  ``[  12.3 s] Workers: Install hyperopt and pymongo into the venv (2/3 hosts)``, never escape codes;
* ``quiet``: nothing.

Control side (rich is a control-side dependency; worker hosts never import this).
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any, Protocol

# ansible-runner events that end a task on one host, and whether the host did something
_DONE_EVENTS = {
    "runner_on_ok": True,
    "runner_on_failed": True,
    "runner_on_unreachable": True,
    "runner_on_skipped": False,
    "runner_item_on_ok": None,  # items: the task result follows
}


class Progress(Protocol):
    def event(self, event: dict[str, Any]) -> None: ...

    def close(self, ok: bool) -> None: ...


class _Tracker:
    """The state both displays share: elapsed, current play and task, hosts done/started."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.t0 = time.monotonic()
        self.play = ""
        self.task = ""
        self.started: set[str] = set()
        self.done: set[str] = set()
        self.acted = False  # some host did something (not skipped) in the current task
        self._ended: tuple[str, str, int, int, bool] = ("", "", 0, 0, False)  # the task that just ended

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def update(self, event: dict[str, Any]) -> str | None:
        """Digest one event; returns 'task' when a task just ended (a new one starts or the run ends)."""
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        ended = None
        if kind == "playbook_on_play_start":
            self.play = str(data.get("name") or data.get("play") or "")
        elif kind == "playbook_on_task_start":
            ended = "task" if self.task else None
            self._ended = (self.play, self.task, len(self.done), len(self.started), self.acted)
            # "hyperopt_worker : Install ..." -> "Install ..." (the play already says which part)
            self.task = str(data.get("name") or data.get("task") or "").split(" : ", 1)[-1]
            self.started, self.done, self.acted = set(), set(), False
        elif kind == "runner_on_start":
            self.started.add(str(data.get("host", "?")))
        elif kind in _DONE_EVENTS and _DONE_EVENTS[kind] is not None:
            self.done.add(str(data.get("host", "?")))
            self.acted = self.acted or bool(_DONE_EVENTS[kind])
        elif kind == "playbook_on_stats":
            ended = "task" if self.task else None
            self._ended = (self.play, self.task, len(self.done), len(self.started), self.acted)
            self.task = ""
        return ended

    def line(self, play: str, task: str, done: int, started: int) -> str:
        hosts = f" ({done}/{started} host{'s' if started != 1 else ''})" if started else ""
        where = f"{play}: {task}" if play and task else task or play
        return f"[{self.elapsed:6.1f} s] {where}{hosts}"


class PlainProgress:
    """One line per task that did something on some host (no escape codes)."""

    def __init__(self, title: str, stream: IO[str]) -> None:
        self.tracker = _Tracker(title)
        self.stream = stream
        print(f"{title} ...", file=stream, flush=True)

    def event(self, event: dict[str, Any]) -> None:
        if self.tracker.update(event) == "task":
            play, task, done, started, acted = self.tracker._ended
            if acted:
                print(self.tracker.line(play, task, done, started), file=self.stream, flush=True)

    def close(self, ok: bool) -> None:
        word = "done" if ok else "failed"
        print(f"{self.tracker.title} {word} in {self.tracker.elapsed:.1f} s", file=self.stream, flush=True)


class RichProgress:
    """A live status line (rich), in a terminal or a notebook."""

    def __init__(self, title: str, stream: IO[str]) -> None:
        from rich.console import Console
        from rich.progress import Progress as RichBar
        from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

        self.tracker = _Tracker(title)
        self.console = Console(file=stream)
        self.bar = RichBar(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self.bar.start()
        self.row = self.bar.add_task(title, total=None)

    def event(self, event: dict[str, Any]) -> None:
        from rich.markup import escape

        t = self.tracker
        if t.update(event) == "task":
            play, task, done, started, acted = t._ended
            if acted:
                self.console.print(t.line(play, task, done, started), highlight=False, markup=False)
        hosts = f" [{len(t.done)}/{len(t.started)} hosts]" if t.started else ""
        where = f"{t.play}: {t.task}" if t.task else t.play
        self.bar.update(self.row, description=escape(f"{t.title} — {where}{hosts}"))

    def close(self, ok: bool) -> None:
        self.bar.stop()
        word = "done" if ok else "failed"
        self.console.print(f"{self.tracker.title} {word} in {self.tracker.elapsed:.1f} s", highlight=False)


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    try:
        ip = shell.get_ipython() if shell is not None else None  # type: ignore[attr-defined]
    except Exception:
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def reporter(title: str, quiet: bool = False, stream: IO[str] | None = None) -> Progress | None:
    """The display for this run: None when quiet, rich when interactive, plain lines otherwise."""
    if quiet:
        return None
    stream = stream or sys.stderr
    interactive = _in_notebook() or (hasattr(stream, "isatty") and stream.isatty())
    return RichProgress(title, stream) if interactive else PlainProgress(title, stream)
