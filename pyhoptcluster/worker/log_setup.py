"""Logging of ``pyhoptcluster-worker`` and its job children: one stderr handler whose formatter
masks the database password, raw and percent-encoded, and any ``scheme://user:password@`` in a
line. This module is on the worker side: it imports nothing from Ansible or the control side.
"""

from __future__ import annotations

import logging
import re
import sys
import urllib.parse

from hyperopt import mongoexp


class MaskingFormatter(logging.Formatter):
    """Formats log records and masks the given secrets (raw and percent-encoded) in the result."""

    def __init__(self, fmt: str, secrets: list[str] = ()) -> None:  # type: ignore[assignment]
        super().__init__(fmt)
        forms: set[str] = set()
        for secret in secrets:
            if secret:
                forms.update({secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)})
        self._secrets = sorted(forms, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return _URL_PASSWORD_RE.sub(r"\1***@", text)


_URL_PASSWORD_RE = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]+:)[^@\s/]+@")


def setup_logging(level: str | int, secrets: list[str], instance: str) -> None:
    """Replace the root logger's handlers with one stderr handler that masks ``secrets``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        MaskingFormatter(
            f"%(asctime)s %(levelname)s worker[{instance}] %(process)d %(name)s: %(message)s", secrets
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def quiet_stock_url_logging(level: int) -> None:
    """Above DEBUG, silence hyperopt.mongoexp's INFO lines: its ``parse_url`` logs every part of
    the URL on each connection."""
    if level > logging.DEBUG:
        logging.getLogger(mongoexp.__name__).setLevel(logging.WARNING)
