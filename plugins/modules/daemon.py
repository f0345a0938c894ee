#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pyhoptcluster developers
# Apache License 2.0 (see LICENSE)
"""Supervise a daemon with a pid file on hosts where systemd is not PID 1."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: daemon
short_description: Run a long-lived process as a daemon with a pid file (no systemd needed)
description:
  - Starts, stops and restarts one daemon process on hosts where systemd is not PID 1
    (a laptop, a container, a CI machine). On systemd hosts use M(ansible.builtin.systemd_service).
  - The process is started detached (double fork with C(setsid)), stdin from C(/dev/null), stdout and
    stderr appended to O(logfile), every other file descriptor closed (so Ansible never hangs on it),
    and a clean environment (C(PATH), C(HOME), C(LANG), C(LC_*), C(TZ), C(USER), C(LOGNAME), C(TMPDIR)
    from the module's own environment) plus the variables of O(env_file).
  - Next to O(pidfile) the module keeps a record, C(<pidfile>.json), with the argv and the kernel start
    time of the process it started. It never kills by name; a pid is only signalled while
    C(/proc/<pid>/cmdline) still matches that argv (an interpreter prefix added by a C(#!) line is
    allowed) and its start time is unchanged. A pid file whose process is gone or was replaced by an
    unrelated process is stale; it is removed and the unrelated process is left alone.
  - Stopping sends C(SIGTERM), waits up to O(stop_timeout) seconds, then sends C(SIGKILL). Only the
    daemon's own pid is signalled; the daemon is responsible for its children.
  - After a start the module watches the process for O(startup_wait) seconds and fails with the tail
    of the log if it died in that time.
  - O(state=started) does not restart a running daemon whose argv differs from the requested one; it
    returns RV(argv_changed) instead. Use O(state=restarted) (typically from a handler) for that.
version_added: "0.1.0"
author:
  - pyhoptcluster developers
options:
  name:
    description: Name of the daemon, used in messages only.
    type: str
    default: daemon
  argv:
    description:
      - Program and arguments. The first element is an absolute path or a command looked up in the
        C(PATH) of the daemon's environment. Never put secrets here, use O(env_file).
      - Required for O(state=started) and O(state=restarted). With O(state=stopped) it is only used to
        recognise a process whose record file is missing.
    type: list
    elements: str
  pidfile:
    description: Path of the pid file. Parent directories are created (mode 0755) when missing.
    type: path
    required: true
  logfile:
    description: File that receives the daemon's stdout and stderr (appended, created with mode 0600).
      Defaults to C(<pidfile>.log).
    type: path
  env_file:
    description:
      - File of C(KEY=VALUE) lines (systemd C(EnvironmentFile) syntax; blank lines and lines starting
        with C(#) or C(;) are ignored, values may be single- or double-quoted) added to the daemon's
        environment. Keep it mode 0600 when it holds secrets; its content is never returned or logged.
    type: path
  chdir:
    description: Working directory of the daemon.
    type: path
    default: /
  state:
    description:
      - V(started) starts the daemon unless it is already running.
      - V(stopped) stops it if it is running and removes the pid file and record.
      - V(restarted) stops it if it is running and starts it again (always changed).
    type: str
    choices: [started, stopped, restarted]
    default: started
  stop_timeout:
    description: Seconds to wait after C(SIGTERM) before sending C(SIGKILL).
    type: float
    default: 15
  startup_wait:
    description: Seconds the new process must stay alive after a start before it counts as started.
      V(0) skips the check.
    type: float
    default: 0.5
notes:
  - Supports check mode; RV(running) and RV(pid) then describe the current state.
  - The program must keep its command line. A wrapper script that C(exec)s another program
    changes it, and the module then treats the pid as foreign (stale) and never signals it.
  - The daemon runs as the user the module runs as.
  - Linux only (reads C(/proc)).
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Run the worker as a daemon, credentials from a 0600 file
  pyhoptcluster.cluster.daemon:
    name: hyperopt-worker@1
    argv:
      - /opt/hyperopt-worker/venv/bin/pyhoptcluster-worker
      - --config
      - /etc/pyhoptcluster/worker.conf
      - --instance
      - "1"
    env_file: /etc/pyhoptcluster/worker.conf
    pidfile: /var/lib/pyhoptcluster/worker-1.pid
    logfile: /var/log/pyhoptcluster/worker-1.log
    state: started

- name: Restart it (e.g. from a handler after the config changed)
  pyhoptcluster.cluster.daemon:
    name: hyperopt-worker@1
    argv: [/opt/hyperopt-worker/venv/bin/pyhoptcluster-worker, --config, /etc/pyhoptcluster/worker.conf,
           --instance, "1"]
    pidfile: /var/lib/pyhoptcluster/worker-1.pid
    state: restarted

- name: Stop it (SIGTERM, SIGKILL after 10 s)
  pyhoptcluster.cluster.daemon:
    pidfile: /var/lib/pyhoptcluster/worker-1.pid
    state: stopped
    stop_timeout: 10
"""

RETURN = r"""
pid:
  description: Pid of the running daemon, or null when none runs.
  returned: always
  type: int
  sample: 12345
running:
  description: Whether the daemon runs after the task (in check mode, whether it runs now).
  returned: always
  type: bool
  sample: true
pidfile:
  description: The pid file.
  returned: always
  type: str
  sample: /var/lib/pyhoptcluster/worker-1.pid
logfile:
  description: The log file.
  returned: always
  type: str
  sample: /var/lib/pyhoptcluster/worker-1.pid.log
stale_removed:
  description: Whether a stale pid file (process gone or replaced by an unrelated one) was removed.
  returned: always
  type: bool
  sample: false
killed:
  description: Whether the daemon had to be sent SIGKILL because it outlived O(stop_timeout).
  returned: when a process was stopped
  type: bool
  sample: false
argv_changed:
  description: With O(state=started), whether the running daemon was started with a different argv.
  returned: always
  type: bool
  sample: false
"""

import errno
import json
import os
import shutil
import signal
import sys
import time

from ansible.module_utils.basic import AnsibleModule

KEPT_ENV = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "USER", "LOGNAME", "TMPDIR")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LOG_TAIL_BYTES = 4000
POLL = 0.05


class DaemonError(Exception):
    pass


# ---------------------------------------------------------------- /proc helpers


def proc_cmdline(pid):
    """argv of a live, non-zombie process as a list of str, or None."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            raw = f.read()
    except (IOError, OSError):
        return None
    if not raw:  # zombies and kernel threads have an empty cmdline
        return None
    parts = raw.split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    return [os.fsdecode(p) for p in parts]


def proc_stat(pid):
    """(state, starttime) of a process or None when it does not exist."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            data = f.read().decode("ascii", "replace")
    except (IOError, OSError):
        return None
    # comm may contain spaces and parentheses: fields start after the last ')'
    rest = data[data.rfind(")") + 2 :].split()
    try:
        return rest[0], int(rest[19])
    except (IndexError, ValueError):
        return None


def cmdline_matches(cmdline, argv, exe):
    """True if cmdline is argv, allowing a #! interpreter (plus one argument) in front."""
    if not cmdline or not argv:
        return False
    n = len(argv)
    extra = len(cmdline) - n
    if extra < 0 or extra > 2:
        return False
    if cmdline[extra + 1 :] != list(argv[1:]):
        return False
    head = cmdline[extra]
    if extra == 0:
        return head == argv[0] or (exe is not None and head == exe)
    # with an interpreter in front the kernel puts the path that was exec'd
    return head in (argv[0], exe)


# ------------------------------------------------------------------ the daemon


class Daemon(object):
    def __init__(self, module):
        p = module.params
        self.module = module
        self.name = p["name"]
        self.argv = p["argv"]
        self.pidfile = p["pidfile"]
        self.logfile = p["logfile"] or (self.pidfile + ".log")
        self.recordfile = self.pidfile + ".json"
        self.env_file = p["env_file"]
        self.chdir = p["chdir"]
        self.stop_timeout = p["stop_timeout"]
        self.startup_wait = p["startup_wait"]

    # ---- state on disk

    def read_pid(self):
        try:
            with open(self.pidfile) as f:
                text = f.read().strip()
        except (IOError, OSError) as e:
            if e.errno == errno.ENOENT:
                return None
            raise DaemonError("cannot read pid file %s: %s" % (self.pidfile, e)) from None
        try:
            pid = int(text)
        except ValueError:
            return -1  # garbage: stale
        return pid if pid > 0 else -1

    def read_record(self):
        try:
            with open(self.recordfile) as f:
                rec = json.load(f)
        except (IOError, OSError, ValueError):
            return None
        return rec if isinstance(rec, dict) else None

    def remove_state(self):
        for path in (self.pidfile, self.recordfile):
            try:
                os.unlink(path)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise DaemonError("cannot remove %s: %s" % (path, e)) from None

    def write_atomic(self, path, text, mode):
        tmp = "%s.tmp.%d" % (path, os.getpid())
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.write(fd, text.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)

    def status(self):
        """Returns (pid or None, record or None, stale) for the pid file."""
        pid = self.read_pid()
        if pid is None:
            return None, None, False
        if pid < 0:
            return None, None, True
        rec = self.read_record()
        if rec is not None and rec.get("pid") != pid:
            rec = None
        if self.is_ours(pid, rec):
            return pid, rec, False
        return None, None, True

    def is_ours(self, pid, rec):
        st = proc_stat(pid)
        if st is None or st[0] in ("Z", "X"):
            return False
        if rec is not None:
            if rec.get("starttime") is not None and rec["starttime"] != st[1]:
                return False  # same number, another process
            argv, exe = rec.get("argv"), rec.get("exe")
        elif self.argv:
            # no record (written by hand or lost): recognise only by the argv we were given
            argv, exe = self.argv, None
        else:
            return False
        return cmdline_matches(proc_cmdline(pid), argv, exe)

    def alive(self, pid, starttime):
        st = proc_stat(pid)
        return st is not None and st[0] not in ("Z", "X") and st[1] == starttime

    # ---- environment

    def load_env_file(self):
        env = {}
        if not self.env_file:
            return env
        try:
            with open(self.env_file) as f:
                lines = f.read().splitlines()
        except (IOError, OSError) as e:
            raise DaemonError("cannot read env_file %s: %s" % (self.env_file, e.strerror)) from None
        for lineno, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("export "):
                line = line[len("export ") :].lstrip()
            key, sep, value = line.partition("=")
            key = key.strip()
            # the line itself is never shown: it may hold a secret
            if (
                not sep
                or not key
                or not (key[0].isalpha() or key[0] == "_")
                or not all(c.isalnum() or c == "_" for c in key)
            ):
                raise DaemonError("env_file %s line %d is not KEY=VALUE" % (self.env_file, lineno))
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                quote, value = value[0], value[1:-1]
                if quote == '"':
                    value = value.replace('\\"', '"').replace("\\\\", "\\")
            env[key] = value
        return env

    def build_env(self):
        env = {}
        for key, value in os.environ.items():
            if key in KEPT_ENV or key.startswith("LC_"):
                env[key] = value
        env.setdefault("PATH", DEFAULT_PATH)
        env.update(self.load_env_file())
        return env

    def resolve_exe(self, env):
        prog = self.argv[0]
        if "/" in prog:
            exe = os.path.abspath(os.path.join(self.chdir, prog))
        else:
            exe = shutil.which(prog, path=env.get("PATH", DEFAULT_PATH))
            if exe is None:
                raise DaemonError("%s: %s not found in PATH %s" % (self.name, prog, env.get("PATH")))
        if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
            raise DaemonError("%s: %s is not an executable file" % (self.name, exe))
        return exe

    # ---- start / stop

    def log_size(self):
        try:
            return os.path.getsize(self.logfile)
        except OSError:
            return 0

    def log_tail(self, offset):
        try:
            with open(self.logfile, "rb") as f:
                f.seek(max(offset, os.path.getsize(self.logfile) - LOG_TAIL_BYTES))
                return f.read().decode("utf-8", "replace")
        except (IOError, OSError):
            return ""

    def start(self):
        if not self.argv:
            raise DaemonError("argv is required to start %s" % self.name)
        env = self.build_env()
        if not os.path.isdir(self.chdir):
            raise DaemonError("%s: chdir %s is not a directory" % (self.name, self.chdir))
        exe = self.resolve_exe(env)
        for d in {os.path.dirname(self.pidfile), os.path.dirname(self.logfile)}:
            if d and not os.path.isdir(d):
                os.makedirs(d, 0o755)

        offset = self.log_size()
        logfd = os.open(self.logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.write(
            logfd, ("--- %s: starting %s\n" % (time.strftime("%Y-%m-%d %H:%M:%S"), self.name)).encode("utf-8")
        )
        rfd, wfd = os.pipe()  # both close-on-exec: EOF on rfd means exec succeeded
        sys.stdout.flush()
        sys.stderr.flush()
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the forked processes
            try:
                os.close(rfd)
                os.setsid()
                if os.fork() != 0:
                    os._exit(0)
                self._exec_grandchild(exe, env, logfd, wfd)
            finally:
                os._exit(127)
        os.close(wfd)
        os.close(logfd)
        os.waitpid(child, 0)
        chunks = []
        while True:
            chunk = os.read(rfd, 4096)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(rfd)
        reply = b"".join(chunks).decode("utf-8", "replace").split("\n", 1)
        try:
            pid = int(reply[0])
        except ValueError:
            reason = reply[0] or "no reply from child"
            raise DaemonError("%s: could not start: %s" % (self.name, reason)) from None
        if len(reply) > 1 and reply[1].strip():
            raise DaemonError("%s: could not exec %s: %s" % (self.name, exe, reply[1].strip()))
        st = proc_stat(pid)
        starttime = st[1] if st else None
        record = {
            "pid": pid,
            "argv": list(self.argv),
            "exe": exe,
            "starttime": starttime,
            "name": self.name,
            "started_at": time.time(),
        }
        self.write_atomic(self.recordfile, json.dumps(record, indent=1) + "\n", 0o644)
        self.write_atomic(self.pidfile, "%d\n" % pid, 0o644)

        deadline = time.time() + self.startup_wait
        while True:
            if starttime is None or not self.alive(pid, starttime):
                self.remove_state()
                tail = self.log_tail(offset)
                raise DaemonError(
                    "%s died right after start (pid %d); last lines of %s:\n%s"
                    % (self.name, pid, self.logfile, tail)
                )
            if time.time() >= deadline:
                return pid
            time.sleep(POLL)

    def _exec_grandchild(self, exe, env, logfd, wfd):  # pragma: no cover - forked process
        try:
            os.chdir(self.chdir)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(logfd, 1)
            os.dup2(logfd, 2)
            # close every other fd but the status pipe (close-on-exec itself)
            os.closerange(3, wfd)
            os.closerange(wfd + 1, 65536)
            # Python ignores SIGPIPE/SIGXFSZ; ignored signals survive exec, so reset them
            for sig in (
                signal.SIGPIPE,
                signal.SIGXFSZ,
                signal.SIGINT,
                signal.SIGHUP,
                signal.SIGTERM,
                signal.SIGQUIT,
            ):
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, [])
            os.write(wfd, ("%d\n" % os.getpid()).encode("ascii"))
            os.execve(exe, list(self.argv), env)
        except BaseException as e:  # report any failure to the parent
            try:
                os.write(wfd, ("%s\n" % e).encode("utf-8", "replace"))
            finally:
                os._exit(127)

    def stop(self, pid, rec):
        """Signal our own process; returns True if SIGKILL was needed."""
        starttime = rec.get("starttime") if rec else None
        if starttime is None:
            st = proc_stat(pid)
            starttime = st[1] if st else None
        if starttime is None:
            return False

        def gone():
            return not self.alive(pid, starttime)

        try:
            os.kill(pid, signal.SIGTERM)
        except OSError as e:
            if e.errno == errno.ESRCH:
                return False
            raise DaemonError("cannot signal %s (pid %d): %s" % (self.name, pid, e)) from None
        deadline = time.time() + self.stop_timeout
        while time.time() < deadline:
            if gone():
                return False
            time.sleep(POLL)
        if gone():
            return False
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError as e:
            if e.errno != errno.ESRCH:
                raise DaemonError("cannot kill %s (pid %d): %s" % (self.name, pid, e)) from None
        deadline = time.time() + 10
        while not gone():
            if time.time() > deadline:
                raise DaemonError("%s (pid %d) survived SIGKILL" % (self.name, pid))
            time.sleep(POLL)
        return True


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", default="daemon"),
            argv=dict(type="list", elements="str"),
            pidfile=dict(type="path", required=True),
            logfile=dict(type="path"),
            env_file=dict(type="path"),
            chdir=dict(type="path", default="/"),
            state=dict(type="str", default="started", choices=["started", "stopped", "restarted"]),
            stop_timeout=dict(type="float", default=15.0),
            startup_wait=dict(type="float", default=0.5),
        ),
        required_if=[("state", "started", ["argv"]), ("state", "restarted", ["argv"])],
        supports_check_mode=True,
    )
    d = Daemon(module)
    state = module.params["state"]
    result = dict(
        changed=False, pidfile=d.pidfile, logfile=d.logfile, stale_removed=False, argv_changed=False
    )
    try:
        pid, rec, stale = d.status()
        if state == "started" and pid is not None and rec is not None:
            result["argv_changed"] = rec.get("argv") != list(d.argv)

        if module.check_mode:
            changed = (
                stale
                or state == "restarted"
                or (state == "started" and pid is None)
                or (state == "stopped" and pid is not None)
            )
            module.exit_json(
                pid=pid, running=pid is not None, **dict(result, changed=changed, stale_removed=stale)
            )

        if stale:
            d.remove_state()
            result.update(changed=True, stale_removed=True)

        if state == "started" and pid is not None:
            module.exit_json(pid=pid, running=True, **result)

        if pid is not None:  # stopped or restarted
            result["killed"] = d.stop(pid, rec)
            d.remove_state()
            result["changed"] = True
        elif state == "stopped" and os.path.exists(d.recordfile):
            d.remove_state()  # a record without pid file
            result["changed"] = True

        if state == "stopped":
            module.exit_json(pid=None, running=False, **result)

        new_pid = d.start()
        result["changed"] = True
        result["argv_changed"] = False
        module.exit_json(pid=new_pid, running=True, **result)
    except DaemonError as e:
        module.fail_json(msg=str(e), **result)
    except (OSError, IOError) as e:
        module.fail_json(msg="%s: %s" % (d.name, e), **result)


if __name__ == "__main__":
    main()
