"""ansible-runner glue: the only module that imports ansible_runner.

Runs one of the project's playbooks in a fresh private data dir, collects the output for
``print_log()``, the failures for error messages, and the ``set_stats`` result from the
``playbook_on_stats`` event.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyhoptcluster.control.progress import Progress
from pyhoptcluster.control.state import STATS_KEY
from pyhoptcluster.errors import MESSAGE_PREFIXES, PlaybookError

_PLAYBOOK_DIR_ENV = "PYHOPTCLUSTER_ANSIBLE_DIR"
# Where the wheel carries the collection pyhoptcluster.control.cluster (pyproject.toml's wheel sources).
_PACKAGED = Path(__file__).resolve().parents[1] / "_collection"
_COLLECTION = ("ansible_collections", "pyhoptcluster", "cluster")


def ansible_dir() -> Path:
    """The root of the collection ``pyhoptcluster.control.cluster`` this package runs (ansible.cfg,
    playbooks/, roles/, plugins/): the copy the wheel installed next to the package, else the repo
    root of a checkout (an editable install), else ``$PYHOPTCLUSTER_ANSIBLE_DIR`` when set."""
    override = os.environ.get(_PLAYBOOK_DIR_ENV)
    if override:
        root = Path(override)
    elif _PACKAGED.is_dir():
        root = _PACKAGED.joinpath(*_COLLECTION)
    else:
        root = Path(__file__).resolve().parents[2]
    if not (root / "playbooks" / "site.yml").is_file():
        raise PlaybookError(
            f"pyhoptcluster's playbooks were not found under {root}: the installed package is incomplete; "
            f"reinstall it (pip install --force-reinstall pyhoptcluster) or set {_PLAYBOOK_DIR_ENV} to a "
            "checkout or an unpacked collection pyhoptcluster.control.cluster"
        )
    return root


def collections_dir() -> Path:
    """The folder holding ``ansible_collections/pyhoptcluster/cluster`` for :func:`ansible_dir`
    (ANSIBLE_COLLECTIONS_PATH of every run, so pyhoptcluster.cluster.* resolves to that copy)."""
    root = ansible_dir()
    if root.parts[-3:] == _COLLECTION:
        return root.parents[2]
    # a checkout: collections/ansible_collections/pyhoptcluster/cluster is a symlink to ../../..
    return root / "collections"


@dataclass(frozen=True)
class HostFailure:
    host: str
    task: str
    message: str
    unreachable: bool = False

    def __str__(self) -> str:
        kind = "unreachable" if self.unreachable else "failed"
        return f"{self.host} {kind} at '{self.task}': {self.message}"


@dataclass(frozen=True)
class PlaybookRun:
    playbook: str
    status: str
    rc: int
    stats: dict[str, Any] = field(default_factory=dict)
    failures: list[HostFailure] = field(default_factory=list)
    output: str = ""
    changed: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "successful" and self.rc == 0

    def raise_for_failure(self) -> None:
        """Raise the exception named by the first failure message, else PlaybookError."""
        if self.ok:
            return
        for failure in self.failures:
            prefix, _, rest = failure.message.partition(":")
            exc_type = MESSAGE_PREFIXES.get(prefix.strip())
            if exc_type is not None and rest:
                raise exc_type(rest.strip())
        details = [str(f) for f in self.failures]
        summary = "; ".join(details) if details else f"status {self.status}, rc {self.rc}"
        parts = [f"{self.playbook} failed: {summary.rstrip('.')}."]
        unreachable = sorted({f.host for f in self.failures if f.unreachable})
        if unreachable:
            parts.append(
                f"Unreachable: {', '.join(unreachable)}; check that "
                f"{'it is' if len(unreachable) == 1 else 'they are'} up and that ansible_host, ansible_user "
                "and ansible_ssh_private_key_file are right "
                f"(ansible -i <inventory> -m ping {unreachable[0]})."
            )
        state = self._cluster_state()
        if state:
            parts.append(state)
        parts.append("See print_log() for the whole output.")
        raise PlaybookError(" ".join(parts), details)

    def _cluster_state(self) -> str:
        """What the run still published about the workers (the other hosts kept going)."""
        published = self.stats.get(STATS_KEY)
        workers = published.get("workers") if isinstance(published, Mapping) else None
        if not isinstance(workers, Mapping):
            return ""
        running = [f"{host} runs {_ids(ids)}" for host, ids in workers.items() if ids]
        idle = [str(host) for host, ids in workers.items() if not ids]
        lost = sorted({f.host for f in self.failures} - {str(h) for h in workers})
        text = "Cluster state: " + ("; ".join(running) if running else "no workers running")
        if idle:
            text += f"; no workers on {', '.join(idle)}"
        if lost:
            text += (
                f"; unknown on {', '.join(lost)} (this run did not finish there; workers started "
                "there earlier may still run)"
            )
        return text + "."


def _ids(ids: Any) -> str:
    try:
        return "workers " + ", ".join(str(i) for i in sorted(int(i) for i in ids))
    except (TypeError, ValueError):
        return f"workers {ids}"


def _message(res: Mapping[str, Any]) -> str:
    msg = res.get("msg") or res.get("stderr") or res.get("reason") or ""
    if isinstance(msg, list):
        msg = " ".join(str(m) for m in msg)
    # ansible-core 2.19 prefixes "Task failed: "; ssh puts known-hosts notices into connection errors
    msg = re.sub(r"Warning: Permanently added .*? to the list of known hosts\.\s*", "", str(msg))
    return msg.removeprefix("Task failed: ").strip() or "no message (see print_log())"


def run_playbook(
    playbook: str,
    inventory: str | Mapping[str, Any],
    extravars: Mapping[str, Any] | None = None,
    *,
    tags: str | None = None,
    debug: bool = False,
    progress: Progress | None = None,
) -> PlaybookRun:
    """Run ``playbooks/<playbook>`` of the project and return what happened (never raises for a
    failed play; call ``raise_for_failure()``). ``progress`` is shown every event (progress.py)."""
    import ansible_runner  # control side only: worker hosts never import this module

    root = ansible_dir()
    playbook_path = root / "playbooks" / playbook
    events: list[dict[str, Any]] = []

    def on_event(event: dict[str, Any]) -> bool:
        events.append(event)
        if progress is not None:
            progress.event(event)
        return True

    # The interpreter running the facade also runs ansible-playbook's helpers: put its bin dir first
    # so a notebook that never activated the venv still finds the matching ansible-playbook.
    bin_dir = str(Path(sys.executable).parent)
    envvars = {
        "ANSIBLE_CONFIG": str(root / "ansible.cfg"),
        "ANSIBLE_COLLECTIONS_PATH": str(collections_dir()),
        "ANSIBLE_FORCE_COLOR": "0",
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
    }
    private_dir = tempfile.mkdtemp(prefix="pyhoptcluster-run-")
    result = None
    # ansible-runner turns SIGINT/SIGTERM into "cancel this run" and never puts the caller's handlers
    # back: without this, Ctrl-C after the first run (a notebook, `logs --follow`) would do nothing.
    handlers = _signal_handlers()
    try:
        result = ansible_runner.run(
            private_data_dir=private_dir,
            project_dir=str(root),
            playbook=str(playbook_path),
            inventory=inventory,
            extravars=dict(extravars or {}),
            envvars=envvars,
            tags=tags,
            quiet=not debug,
            event_handler=on_event,
            rotate_artifacts=1,
            suppress_env_files=True,
            verbosity=1 if debug else 0,
        )
        _restore(handlers)
        if result.status == "canceled":  # Ctrl-C (or SIGTERM) while the playbook ran
            raise KeyboardInterrupt(f"{playbook} was interrupted")
        output_lines = [e["stdout"] for e in events if e.get("stdout")]
        stats: dict[str, Any] = {}
        changed: dict[str, int] = {}
        failures: list[HostFailure] = []
        for event in events:
            data = event.get("event_data") or {}
            kind = event.get("event")
            if kind == "playbook_on_stats":
                stats = dict(data.get("artifact_data") or {})
                changed = {str(h): int(n) for h, n in (data.get("changed") or {}).items()}
            elif kind in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
                failures.append(
                    HostFailure(
                        host=str(data.get("host", "?")),
                        task=str(data.get("task", "?")),
                        message=_message(data.get("res") or {}),
                        unreachable=kind == "runner_on_unreachable",
                    )
                )
        return PlaybookRun(
            playbook=playbook,
            status=str(result.status),
            rc=int(result.rc if result.rc is not None else -1),
            stats=stats,
            failures=failures,
            output="\n".join(output_lines),
            changed=changed,
        )
    finally:
        _restore(handlers)
        shutil.rmtree(private_dir, ignore_errors=True)
        if progress is not None:
            progress.close(result is not None and result.status == "successful" and result.rc == 0)


def _signal_handlers() -> dict[int, Any] | None:
    """The SIGINT and SIGTERM handlers now (None off the main thread, where none can be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore(handlers: dict[int, Any] | None) -> None:
    for sig, handler in (handlers or {}).items():
        if handler is not None:
            signal.signal(sig, handler)
