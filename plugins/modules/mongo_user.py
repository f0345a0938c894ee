#!/usr/bin/python
# Copyright: pyhoptcluster developers
# Apache License 2.0 (see galaxy.yml)
# ruff: noqa: E402 -- Ansible modules put DOCUMENTATION/EXAMPLES/RETURN before the imports
"""Ensure the cluster's SCRAM user exists, during the bootstrap phase (server running without auth)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: mongo_user
short_description: Ensure a SCRAM user with readWrite on one database (bootstrap phase)
version_added: "0.1.0"
description:
  - Connects without credentials to a MongoDB-protocol server that runs B(without) auth (the role's
    bootstrap phase, bound to 127.0.0.1) and makes sure O(username) exists in O(dbname) with exactly
    the roles O(roles) on O(dbname) and the password held in O(password_file).
  - The password is read from a file on the host the module runs on; it is never a module option, never
    returned and masked in any output. The server hashes it (SCRAM-SHA-256).
  - Idempotent. An existing user is left alone when its roles match and the password authenticates
    (a SCRAM handshake, which servers answer even while auth is not enforced).
  - Needs pymongo (>= 4.6) in the Python that runs the module, i.e. the control node's
    C(ansible_python_interpreter).
requirements:
  - pymongo >= 4.6
options:
  host:
    description: Address of the server.
    type: str
    default: 127.0.0.1
  port:
    description: Port of the server.
    type: int
    default: 27017
  dbname:
    description: Database the user is created in and gets its roles on.
    type: str
    required: true
  username:
    description: Name of the user.
    type: str
    required: true
  password_file:
    description: File holding the password (first line; surrounding whitespace is ignored). Keep it 0600.
    type: path
    required: true
  roles:
    description: Roles on O(dbname).
    type: list
    elements: str
    default: [readWrite]
  state:
    description: V(present) creates or updates the user, V(absent) drops it.
    type: str
    choices: [present, absent]
    default: present
  connect_timeout:
    description: Seconds to wait for the server.
    type: float
    default: 10
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
author:
  - pyhoptcluster developers
"""

EXAMPLES = r"""
- name: Create the experiment user while the server runs without auth on 127.0.0.1
  pyhoptcluster.cluster.mongo_user:
    host: 127.0.0.1
    port: 27017
    dbname: hyperopt
    username: pyhoptcluster
    password_file: ~/.local/share/pyhoptcluster/mongodb.password
  no_log: true
"""

RETURN = r"""
user:
  description: The user, as C(<username>@<dbname>).
  returned: always
  type: str
  sample: pyhoptcluster@hyperopt
action:
  description: What was done (or would be done in check mode).
  returned: always
  type: str
  choices: [none, created, updated, dropped]
  sample: created
"""

import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    import pymongo
    from pymongo.errors import OperationFailure, PyMongoError
except ImportError:
    pymongo = None
    PYMONGO_IMPORT_ERROR = traceback.format_exc()
else:
    PYMONGO_IMPORT_ERROR = None

AUTH_FAILED = 18


def _client(params, **extra):
    ms = int(params["connect_timeout"] * 1000)
    return pymongo.MongoClient(
        host=params["host"],
        port=params["port"],
        serverSelectionTimeoutMS=ms,
        connectTimeoutMS=ms,
        directConnection=True,
        **extra,
    )


def _password_works(params, password):
    client = _client(
        params,
        username=params["username"],
        password=password,
        authSource=params["dbname"],
        authMechanism="SCRAM-SHA-256",
    )
    try:
        client.admin.command("ping")
        return True
    except OperationFailure as exc:
        if exc.code == AUTH_FAILED:
            return False
        raise
    finally:
        client.close()


def main():
    module = AnsibleModule(
        argument_spec={
            "host": {"type": "str", "default": "127.0.0.1"},
            "port": {"type": "int", "default": 27017},
            "dbname": {"type": "str", "required": True},
            "username": {"type": "str", "required": True},
            "password_file": {"type": "path", "required": True, "no_log": False},
            "roles": {"type": "list", "elements": "str", "default": ["readWrite"]},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "connect_timeout": {"type": "float", "default": 10.0},
        },
        supports_check_mode=True,
    )
    if pymongo is None:
        module.fail_json(
            msg=missing_required_lib("pymongo")
            + "; it must be importable by the control node's ansible_python_interpreter",
            exception=PYMONGO_IMPORT_ERROR,
        )
    p = module.params
    user = f"{p['username']}@{p['dbname']}"
    wanted_roles = sorted({(r, p["dbname"]) for r in p["roles"]})
    result = {"changed": False, "user": user, "action": "none"}

    password = None
    if p["state"] == "present":
        try:
            with open(p["password_file"], encoding="utf-8") as f:
                password = f.readline().strip()
        except OSError as exc:
            module.fail_json(msg=f"cannot read password_file {p['password_file']}: {exc.strerror}", **result)
        if not password:
            module.fail_json(msg=f"password_file {p['password_file']} is empty", **result)
        module.no_log_values.add(password)

    client = _client(p)
    try:
        db = client[p["dbname"]]
        found = db.command("usersInfo", p["username"]).get("users", [])
        if p["state"] == "absent":
            if found:
                result.update(changed=True, action="dropped")
                if not module.check_mode:
                    db.command("dropUser", p["username"])
            module.exit_json(**result)

        role_docs = [{"role": role, "db": dbname} for role, dbname in wanted_roles]
        if not found:
            result.update(changed=True, action="created")
            if not module.check_mode:
                db.command("createUser", p["username"], pwd=password, roles=role_docs)
            module.exit_json(**result)

        have_roles = sorted({(r.get("role"), r.get("db")) for r in found[0].get("roles", [])})
        if have_roles != wanted_roles or not _password_works(p, password):
            result.update(changed=True, action="updated")
            if not module.check_mode:
                db.command("updateUser", p["username"], pwd=password, roles=role_docs)
        module.exit_json(**result)
    except PyMongoError as exc:
        module.fail_json(
            msg=f"{user} on {p['host']}:{p['port']}: {exc}; the server must run without auth "
            "(bootstrap phase) and be reachable",
            **result,
        )
    finally:
        client.close()


if __name__ == "__main__":
    main()
