#!/usr/bin/env python3
"""Keep one ssh tunnel up: run ``ssh ...`` and start it again whenever it exits.

    python3 ssh_tunnel_keeper.py [--first-grace S] [--max-backoff S] -- ssh -N -R ... host

Run by the hyperopt_worker role on the control node, under the pyhoptcluster.cluster.daemon module (the
pid file names this keeper; its command line holds the whole ssh command, so the role can compare it).

* A first ssh that exits within ``--first-grace`` seconds (bad key, port taken on the host, host down)
  ends the keeper with ssh's exit status: the role then reports the failure with the log instead of
  the keeper retrying a tunnel that never worked.
* Afterwards, an ssh that exits (connection lost, host rebooted: ssh's keep-alives notice a dead peer in
  about 45 s) is started again after 1 s, doubling up to ``--max-backoff`` while it keeps failing,
  back to 1 s once a tunnel stayed up for a minute.
* SIGTERM, SIGINT or SIGHUP stop ssh (SIGTERM, SIGKILL after 5 s) and end the keeper with status 0.

Standard library only; every line goes to stdout, which the daemon module appends to the tunnel's log.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time

STABLE_S = 60.0  # a tunnel that stayed up this long resets the backoff
STOP_TIMEOUT_S = 5.0


def log(msg: str) -> None:
    print(time.strftime("%Y-%m-%dT%H:%M:%S ") + "ssh-tunnel-keeper: " + msg, flush=True)


class Keeper:
    """Runs ``command`` again and again; ``request_stop`` (the signal handler) ends it."""

    def __init__(self, command: list[str], first_grace: float, max_backoff: float) -> None:
        self.command = command
        self.first_grace = first_grace
        self.max_backoff = max_backoff
        self.stopping = False
        self.child: subprocess.Popen | None = None

    def request_stop(self, _signum: int = 0, _frame: object = None) -> None:
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            self.child.terminate()

    def _run_once(self) -> tuple[int, float]:
        """(exit status, seconds it ran) of one run of the command."""
        started = time.monotonic()
        self.child = subprocess.Popen(self.command, stdin=subprocess.DEVNULL)
        if self.stopping:  # a signal raced with the start
            self.child.terminate()
        log(f"ssh started (pid {self.child.pid})")
        return self.child.wait(), time.monotonic() - started

    def _pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(0.1)

    def run(self) -> int:
        backoff, first = 1.0, True
        while not self.stopping:
            rc, ran = self._run_once()
            if self.stopping:
                break
            if first and ran < self.first_grace:
                log(f"ssh exited with status {rc} after {ran:.1f} s on its first start; giving up")
                return rc if rc > 0 else 1
            first = False
            backoff = 1.0 if ran >= STABLE_S else backoff
            log(f"ssh exited with status {rc} after {ran:.1f} s; starting it again in {backoff:.0f} s")
            self._pause(backoff)
            backoff = min(backoff * 2, self.max_backoff)
        self._stop_child()
        log("stopped")
        return 0

    def _stop_child(self) -> None:
        if self.child is None or self.child.poll() is not None:
            return
        self.child.terminate()
        try:
            self.child.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.child.kill()
            self.child.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--first-grace", type=float, default=5.0)
    parser.add_argument("--max-backoff", type=float, default=30.0)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (put it after --)")
    keeper = Keeper(command, args.first_grace, args.max_backoff)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, keeper.request_stop)
    return keeper.run()


if __name__ == "__main__":
    sys.exit(main())
