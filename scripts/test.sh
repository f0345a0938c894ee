#!/usr/bin/env bash
# The test command (README "Run the tests"): installs what it needs, lints, runs unit and
# integration tests against real processes. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup-dev.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff"; ruff check . && ruff format --check .
echo "== ansible-lint"; ansible-lint --profile production -q
echo "== pytest"; pytest -p no:cacheprovider "${@:-tests}"
