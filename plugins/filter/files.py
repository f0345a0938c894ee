# -*- coding: utf-8 -*-
# Copyright: pyhoptcluster developers
# Apache License 2.0 (see LICENSE)
"""file_sha1 and files_match: the roles' warm path for files they copy from the control node.

A copy task is skipped when the host already has the file the control node has: the host side comes
from a role's probe (one module call, mode, owner and sha1 of each file), the control node's side is
read here, where filters run. Documentation: file_sha1.yml and files_match.yml next to this file."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import os

from ansible.errors import AnsibleFilterError


def file_sha1(path):
    """The sha1 (hex) of the bytes of ``path`` on the control node, '' when it is not a readable
    regular file (~ is expanded)."""
    if not path:
        return ""
    digest = hashlib.sha1()
    try:
        with open(os.path.expanduser(str(path)), "rb") as f:
            for chunk in iter(lambda: f.read(65536), b""):
                digest.update(chunk)
    except (IsADirectoryError, OSError):
        return ""
    return digest.hexdigest()


def files_match(found, wanted):
    """Whether every file of ``wanted`` (a list of {path, mode, checksum[, owner]}) is in ``found``
    (a probe's {path: {mode, owner, checksum}}) with that mode and checksum, and that owner when one
    is given. A wanted file with an empty checksum (its source is missing) never matches."""
    if not isinstance(found, dict) or not isinstance(wanted, list):
        raise AnsibleFilterError(
            "files_match: expected a dict of found files and a list of wanted ones, got %r and %r"
            % (type(found).__name__, type(wanted).__name__)
        )
    for want in wanted:
        have = found.get(want["path"]) or {}
        if not want.get("checksum") or have.get("checksum") != want["checksum"]:
            return False
        if have.get("mode") != want["mode"]:
            return False
        if want.get("owner") and have.get("owner") != want["owner"]:
            return False
    return True


class FilterModule(object):
    def filters(self):
        return {"file_sha1": file_sha1, "files_match": files_match}
