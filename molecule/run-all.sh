#!/usr/bin/env bash
# Runs `molecule test` for every scenario under molecule/ (or the ones named), one after another:
# they share one test bed name and subnet (PYHOPTCLUSTER_MOLECULE_TESTBED_NAME/_SUBNET, default
# mol / 10.231.2), so they must not run side by side. Prints the wall time of each scenario.
# Always tears down: a failed or interrupted scenario is destroyed again (test hosts down, server
# stopped, its state removed). Exit status 1 when any scenario failed, 130 when interrupted.
#   bash molecule/run-all.sh [scenario ...]
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
# Molecule's colour codes make CI logs unreadable; it honours NO_COLOR.
[ -t 1 ] || export NO_COLOR=1

if [ $# -gt 0 ]; then
  scenarios=("$@")
else
  # default first: the whole site; then the single-role scenarios.
  scenarios=(default)
  for f in molecule/*/molecule.yml; do
    s=$(basename "$(dirname "$f")")
    [ "$s" = default ] || scenarios+=("$s")
  done
fi

current=""
teardown() {
  # Idempotent: safe when the scenario never got as far as creating anything.
  [ -n "$current" ] || return 0
  echo "== molecule destroy -s $current (teardown)" >&2
  molecule destroy -s "$current" >&2 || echo "== teardown of $current FAILED; run: molecule destroy -s $current" >&2
  current=""
}
trap 'teardown; exit 130' INT TERM

# The scenarios run the collection as a user gets it: built from this checkout and installed by
# ansible-galaxy into a fresh collections path, which comes before the checkout's collections/ (the
# repo's ansible.cfg, which the scenarios still use for ssh options, would name the checkout).
collections=$(mktemp -d "${TMPDIR:-/tmp}/pyhoptcluster-molecule-collections.XXXXXX")
trap 'rm -rf "$collections"' EXIT
# set first: ansible-galaxy skips an install it finds in a configured path (the checkout's symlink)
export ANSIBLE_COLLECTIONS_PATH="$collections"
ansible-galaxy collection build --force --output-path "$collections" . >/dev/null
ansible-galaxy collection install --force -p "$collections" "$collections"/pyhoptcluster-cluster-*.tar.gz >/dev/null
resolved=$(ANSIBLE_CONFIG="$PWD/ansible.cfg" ansible-galaxy collection list pyhoptcluster.cluster --format json \
  | python3 -c 'import json, sys; print(next(iter(json.load(sys.stdin))))')
if [ "$resolved" != "$collections/ansible_collections" ]; then
  echo "== pyhoptcluster.cluster resolves to $resolved, not the installed copy in $collections" >&2
  exit 1
fi
echo "== pyhoptcluster.cluster under test: $resolved/pyhoptcluster/cluster (installed by ansible-galaxy)"

rc=0
summary=()
for s in "${scenarios[@]}"; do
  if [ ! -f "molecule/$s/molecule.yml" ]; then
    echo "== no scenario molecule/$s" >&2
    summary+=("$(printf '%-18s %-7s %8s' "$s" missing -)")
    rc=1
    continue
  fi
  echo "== molecule test -s $s"
  current=$s
  t0=$(date +%s.%N)
  if molecule test -s "$s"; then
    status=passed
    current=""
  else
    status=FAILED
    rc=1
    # `molecule test` destroys at the end even after a failure; a second destroy costs seconds
    # and also covers a failure inside destroy itself.
    teardown
  fi
  secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  summary+=("$(printf '%-18s %-7s %7ss' "$s" "$status" "$secs")")
done

echo "== molecule scenarios"
printf '%s\n' "${summary[@]}"
exit $rc
