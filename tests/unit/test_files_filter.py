"""The roles' warm path for copied files (plugins/filter/files.py): the control node's sha1 of a file
and whether a probe's report holds every wanted file with that content, mode and owner."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "collections"))
from ansible.errors import AnsibleFilterError
from ansible_collections.pyhoptcluster.cluster.plugins.filter.files import file_sha1, files_match


def test_file_sha1_is_the_sha1_of_the_bytes_and_empty_for_what_is_no_file(tmp_path: Path) -> None:
    pem = tmp_path / "ca.pem"
    pem.write_bytes(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    assert file_sha1(str(pem)) == hashlib.sha1(pem.read_bytes()).hexdigest()
    assert file_sha1(str(tmp_path / "missing.pem")) == ""
    assert file_sha1(str(tmp_path)) == ""
    assert file_sha1("") == ""


def test_files_match_needs_content_mode_and_a_given_owner() -> None:
    found = {
        "/s/tls/server.pem": {"mode": "0644", "owner": "root", "checksum": "a" * 40},
        "/s/tls/server.key": {"mode": "0600", "owner": "mongodb", "checksum": "b" * 40},
    }
    cert = {"path": "/s/tls/server.pem", "mode": "0644", "checksum": "a" * 40}
    key = {"path": "/s/tls/server.key", "mode": "0600", "owner": "mongodb", "checksum": "b" * 40}
    assert files_match(found, [cert, key])
    assert files_match(found, [])
    assert not files_match(found, [{**cert, "checksum": "c" * 40}])  # other content
    assert not files_match(found, [{**key, "mode": "0644"}])  # other mode
    assert not files_match(found, [{**key, "owner": "root"}])  # other owner
    assert files_match(found, [{**key, "owner": ""}])  # no owner asked for
    assert not files_match(found, [{**cert, "path": "/s/tls/ca.pem"}])  # not on the host
    assert not files_match(
        {"/x": {"mode": "0644", "checksum": ""}}, [{"path": "/x", "mode": "0644", "checksum": ""}]
    )


def test_files_match_refuses_what_is_no_probe_report() -> None:
    with pytest.raises(AnsibleFilterError, match="expected a dict"):
        files_match(["/s/tls/server.pem"], [])
