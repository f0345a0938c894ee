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
.venv/bin/python -m pip install -q -e '.[dev]'
# SecantusDB (MongoDB-protocol server, GPL-2.0, beta) in its own venv, where the hyperopt_mongodb
# role's `pip` install method puts it by default; the role would install it too, the tests need it
# before any role runs.
SECANTUS_VENV="${PYHOPTCLUSTER_STATE_DIR:-$HOME/.local/share/pyhoptcluster}/secantusdb-venv"
if [ ! -x "$SECANTUS_VENV/bin/secantusd-py" ]; then
  "$PY" -m venv "$SECANTUS_VENV"
  "$SECANTUS_VENV/bin/python" -m pip install -q --pre 'secantusdb==0.7.0b3'
fi
export PYHOPTCLUSTER_SECANTUSD="$SECANTUS_VENV/bin/secantusd-py"
