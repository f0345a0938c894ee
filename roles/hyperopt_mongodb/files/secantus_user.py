"""Provision the experiments' user in a stopped SecantusDB's data directory, with no server running.

Run by the hyperopt_mongodb role (tasks/bootstrap.yml) with the SecantusDB venv's Python, while the
server is stopped:

    python secantus_user.py --storage DBPATH --dbname DB --username USER --password-file FILE

Why offline: a server started without auth to create the first user answers any local client for as
long as it runs (a poller made 54 writes and created a root user in the old 4 s window). Here nothing
listens at all: the user is written into the data directory through SecantusDB's own createUser /
updateUser command handlers (the same code a client's command would run), then the storage is closed
and the role starts the server with auth. The password is read from its 0600 file, never from argv.

Prints one JSON object: {"changed": bool, "action": "created" | "updated", "other_users": [...]}
(other_users: users of other databases or names, for the role to report; their names only).
"""

from __future__ import annotations

import argparse
import json
import sys


def provision(storage_path: str, dbname: str, username: str, password: str, roles: list[str]) -> dict:
    from secantus.commands import CommandContext, dispatch
    from secantus.cursors import CursorRegistry
    from secantus.storage import Storage

    storage = Storage(storage_path)
    try:
        ctx = CommandContext(connection_id=0, storage=storage, cursors=CursorRegistry(), db_name=dbname)
        role_docs = [{"role": r, "db": dbname} for r in roles]
        if storage.get_user(dbname, username) is None:
            reply = dispatch(
                {"createUser": username, "pwd": password, "roles": role_docs, "$db": dbname}, ctx
            )
            action = "created"
        else:
            reply = dispatch(
                {"updateUser": username, "pwd": password, "roles": role_docs, "$db": dbname}, ctx
            )
            action = "updated"
        if reply.get("ok") != 1.0:
            raise RuntimeError(f"{action[:-1]} of {username}@{dbname} failed: {reply.get('errmsg')}")
        others = sorted(
            f"{u.get('user')}@{u.get('db')}"
            for u in storage.list_users(None, limit=1000)
            if (u.get("db"), u.get("user")) != (dbname, username)
        )
        storage.checkpoint()
    finally:
        storage.close()
    return {"changed": True, "action": action, "other_users": others}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True)
    parser.add_argument("--dbname", required=True)
    parser.add_argument("--username", required=True)
    parser.add_argument("--password-file", required=True)
    parser.add_argument("--role", action="append", default=None)
    args = parser.parse_args()
    try:
        with open(args.password_file, encoding="utf-8") as f:
            password = f.read().strip()
        if not password:
            raise RuntimeError(f"{args.password_file} is empty")
        result = provision(args.storage, args.dbname, args.username, password, args.role or ["readWrite"])
    except Exception as exc:  # one JSON answer for the role, whatever failed
        print(json.dumps({"failed": True, "msg": f"{type(exc).__name__}: {exc}"}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
