#!/usr/bin/env bash
# Runs the integration suite (or the given test files) N times in a row against one build,
# stopping at the first failing run and naming it: the check that the suite does not flake
# (docs/testing.md). It does not build; run scripts/test.sh or `ninja -C build` first.
#
# Usage: scripts/test-repeat.sh [-n N] [-b BUILD_DIR] [pytest args or test files...]
#   -n N          runs (default 10)
#   -b BUILD_DIR  the build to test (default build; SM_BUILD_DIR wins when set)
#   the rest      passed to pytest (default: test/integration)
# Each run's output is kept in BUILD_DIR/test-repeat/run-<i>.log.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
n=10
bdir=build
while [ $# -gt 0 ]; do
  case "$1" in
  -n) n=$2; shift 2 ;;
  -b) bdir=$2; shift 2 ;;
  -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
  *) break ;;
  esac
done
[ "$#" -eq 0 ] && set -- test/integration
export SM_BUILD_DIR=${SM_BUILD_DIR:-$root/$bdir}
[ -x "$SM_BUILD_DIR/src/sirius-manager" ] || {
  echo "test-repeat: no build in $SM_BUILD_DIR (run ninja -C $bdir first)" >&2
  exit 2
}
logs="$SM_BUILD_DIR/test-repeat"
mkdir -p "$logs"
PY=/usr/bin/python3 # Debian's interpreter: python3-grpcio lives there
start=$SECONDS
for i in $(seq 1 "$n"); do
  t0=$SECONDS
  if $PY -m pytest -q -p no:cacheprovider "$@" >"$logs/run-$i.log" 2>&1; then
    echo "run $i/$n: passed ($((SECONDS - t0)) s): $(tail -n 1 "$logs/run-$i.log")"
  else
    echo "run $i/$n: FAILED ($((SECONDS - t0)) s); log: $logs/run-$i.log"
    grep -E '^(FAILED|ERROR) ' "$logs/run-$i.log" | head -n 20
    echo "test-repeat: run $i of $n failed"
    exit 1
  fi
done
echo "test-repeat: $n of $n runs passed ($((SECONDS - start)) s)"
