"""Checks the Molecule verifiers run on the control node against a scenario's server (pymongo).

Reads the server's ``server.json`` (written by the hyperopt_mongodb role) and the password from the
0600 file it names; the password never reaches the command line or the output. Prints one JSON
object; exit 0 when the check passed, 1 when it did not (the JSON says why).

    python mongo_check.py auth SERVER_JSON
        authenticated ping and a write/read/delete on the database; an unauthenticated client and
        a wrong password are refused
    python mongo_check.py reserve SERVER_JSON --jobs N [--timeout S]
        inserts N hyperopt job documents (state NEW, no owner, one fresh exp_key) and waits until
        every one has an owner and has left state NEW; prints the owners, then deletes the jobs
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pymongo
from pymongo.errors import OperationFailure, PyMongoError

JOB_STATE_NEW = 0
TIMEOUT_MS = 5000


def load(server_json: str) -> tuple[dict[str, Any], str]:
    info = json.loads(Path(server_json).read_text())
    password = Path(info["password_file"]).read_text().strip()
    return info, password


def client(info: dict[str, Any], username: str | None = None, password: str | None = None) -> Any:
    kwargs: dict[str, Any] = {
        "host": info["host"],
        "port": int(info["port"]),
        "serverSelectionTimeoutMS": TIMEOUT_MS,
        "connectTimeoutMS": TIMEOUT_MS,
        "directConnection": True,
    }
    if info.get("tls"):  # the server speaks only TLS (hyperopt_mongodb_tls): verify it against its CA
        kwargs.update(tls=True, tlsCAFile=info["ca_file"])
    if username is not None:
        kwargs.update(username=username, password=password, authSource=info["dbname"])
    return pymongo.MongoClient(**kwargs)


def refused(action: Any) -> str | None:
    """None when ``action`` was refused by the server, else what it returned."""
    try:
        return repr(action())
    except OperationFailure:
        return None


def check_auth(info: dict[str, Any], password: str) -> dict[str, Any]:
    out: dict[str, Any] = {"host": info["host"], "port": info["port"], "auth": info["auth"]}
    probe = {"_id": f"molecule-{uuid.uuid4().hex}"}
    with client(info, info["username"], password) as c:
        db = c[info["dbname"]]
        out["ping"] = db.command("ping").get("ok") == 1
        db.molecule_probe.insert_one(dict(probe))
        out["write_read"] = db.molecule_probe.find_one(probe) is not None
        db.molecule_probe.delete_one(probe)
    with client(info) as c:
        db = c[info["dbname"]]
        out["unauthenticated_find"] = refused(lambda: db.jobs.find_one())
        out["unauthenticated_insert"] = refused(lambda: db.molecule_probe.insert_one(dict(probe)).inserted_id)
    with client(info, info["username"], password + "-wrong") as c:
        out["wrong_password_ping"] = refused(lambda: c[info["dbname"]].command("ping"))
    out["ok"] = bool(
        out["ping"]
        and out["write_read"]
        and out["unauthenticated_find"] is None
        and out["unauthenticated_insert"] is None
        and out["wrong_password_ping"] is None
    )
    return out


def job_document(exp_key: str, tid: int) -> dict[str, Any]:
    """A job as MongoTrials writes it. Its objective attachment does not exist, so the worker that
    reserves it records it as failed (state ERROR): reservation is what is being checked."""
    return {
        "state": JOB_STATE_NEW,
        "tid": tid,
        "spec": None,
        "result": {"status": "new"},
        "misc": {
            "tid": tid,
            "cmd": ["domain_attachment", "FMinIter_Domain"],
            "workdir": None,
            "idxs": {"x": [tid]},
            "vals": {"x": [0.0]},
        },
        "exp_key": exp_key,
        "owner": None,
        "version": 0,
        "book_time": None,
        "refresh_time": None,
    }


def check_reserve(info: dict[str, Any], password: str, jobs: int, timeout: float) -> dict[str, Any]:
    exp_key = f"molecule-{uuid.uuid4().hex}"
    out: dict[str, Any] = {"exp_key": exp_key, "jobs": jobs}
    with client(info, info["username"], password) as c:
        coll = c[info["dbname"]].jobs
        coll.insert_many([job_document(exp_key, tid) for tid in range(jobs)])
        t0 = time.monotonic()
        try:
            while True:
                docs = list(coll.find({"exp_key": exp_key}, {"owner": 1, "state": 1, "tid": 1}))
                taken = [d for d in docs if d.get("owner") and d.get("state") != JOB_STATE_NEW]
                if len(taken) == jobs or time.monotonic() - t0 > timeout:
                    break
                time.sleep(0.2)
            out["seconds"] = round(time.monotonic() - t0, 2)
            out["owners"] = sorted(str(d.get("owner")) for d in docs)
            out["states"] = sorted(int(d.get("state", -1)) for d in docs)
            out["ok"] = len(taken) == jobs
        finally:
            coll.delete_many({"exp_key": exp_key})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("auth")
    a.add_argument("server_json")
    r = sub.add_parser("reserve")
    r.add_argument("server_json")
    r.add_argument("--jobs", type=int, default=1)
    r.add_argument("--timeout", type=float, default=60.0)
    args = p.parse_args(argv)
    info, password = load(args.server_json)
    try:
        if args.cmd == "auth":
            out = check_auth(info, password)
        else:
            out = check_reserve(info, password, args.jobs, args.timeout)
    except PyMongoError as exc:
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    text = json.dumps(out, sort_keys=True)
    if password in text:  # never happens with the keys above; a guard, not a mask
        text = json.dumps({"ok": False, "error": "output would have contained the password"})
    print(text)
    return 0 if out.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
