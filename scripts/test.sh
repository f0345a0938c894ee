#!/usr/bin/env bash
# The test command (README "The two set-up commands", command 2): installs what it needs, lints, then
# runs the unit tests, the integration tests (real SecantusDB server, real workers, real playbooks),
# the multi-host tests (real systemd test hosts, tests/hosts/testbed.py; needs root) and the Molecule
# scenarios. With arguments, runs just pytest with them (e.g. `-m "not integration and not multihost"`):
# no linters, and the set-up only when .venv is not there yet.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -gt 0 ]; then
  if [ ! -x .venv/bin/pytest ]; then
    source scripts/setup-dev.sh
  fi
  export PATH="$PWD/.venv/bin:$PATH"
  exec pytest -p no:cacheprovider "$@"
fi
source scripts/setup-dev.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff"; ruff check . && ruff format --check .
echo "== ansible-lint"; ansible-lint --profile production -q
echo "== pytest"; pytest -p no:cacheprovider tests
if [ -x molecule/run-all.sh ] || [ -f molecule/run-all.sh ]; then
  echo "== molecule"; bash molecule/run-all.sh
fi
