#!/usr/bin/env bash
# Installs pyhoptcluster, brings up a local cluster (SecantusDB server + 2 workers on this machine),
# runs a 30-trial distributed experiment through plain MongoTrials, and stops the cluster again.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup-dev.sh
.venv/bin/python examples/quickstart.py "$@"
