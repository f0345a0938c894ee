#!/usr/bin/env bash
# Creates .venv with pyhoptcluster (editable) and its dev tools, plus the SecantusDB server venv the
# tests and inventories/local use. Idempotent; safe to re-run. Sourced by test.sh and quickstart.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[dev,report]'
# The report's browser tests run Debian's chromium headless through its chromedriver (never a browser
# that Selenium or playwright would download). CI starts from a fresh machine: install when missing.
if ! { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "setup-dev.sh: chromium and chromium-driver are missing; the report's browser tests need them" \
      "(as root: apt-get install chromium chromium-driver)" >&2
  fi
fi
# SecantusDB (MongoDB-protocol server, GPL-2.0, beta) in its own venv, where the hyperopt_mongodb
# role's `pip` install method puts it by default; the role would install it too, the tests need it
# before any role runs.
SECANTUS_VENV="${PYHOPTCLUSTER_STATE_DIR:-$HOME/.local/share/pyhoptcluster}/secantusdb-venv"
if [ ! -x "$SECANTUS_VENV/bin/secantusd-py" ]; then
  "$PY" -m venv "$SECANTUS_VENV"
  "$SECANTUS_VENV/bin/python" -m pip install -q --pre 'secantusdb==0.7.0b3'
fi
export PYHOPTCLUSTER_SECANTUSD="$SECANTUS_VENV/bin/secantusd-py"
