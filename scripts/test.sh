#!/usr/bin/env bash
# Sets up the machine, builds, and runs every test: the unit and integration suites on a normal
# build, then again on an ASan+UBSan build. Prints one closing line "N passed, N failed".
# Usage: scripts/test.sh [--quick]   (--quick: skip the sanitizer pass)
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
quick=0
[ "${1:-}" = "--quick" ] && quick=1

bash scripts/setup.sh || exit 1

PY=/usr/bin/python3 # Debian's interpreter: python3-grpcio lives there
passed=0
failed=0
failures=()

# Runs one step; counts its tests from the runner's own summary.
count_meson() { # builddir
  local log="$1/meson-logs/testlog.json"
  [ -f "$log" ] || return
  local p f
  p=$(grep -c '"result": "OK"' "$log" || true)
  f=$(grep -c -E '"result": "(FAIL|TIMEOUT|ERROR)"' "$log" || true)
  passed=$((passed + p))
  failed=$((failed + f))
}

run_suite() { # name builddir meson-setup-args...
  local name=$1 dir=$2
  shift 2
  echo "=== $name: configure and build ($dir)"
  if [ ! -f "$dir/build.ninja" ]; then
    meson setup "$dir" "$@" || { failures+=("$name: meson setup"); failed=$((failed + 1)); return; }
  fi
  ninja -C "$dir" || { failures+=("$name: build"); failed=$((failed + 1)); return; }
  echo "=== $name: meson test"
  meson test -C "$dir" --print-errorlogs --num-processes 2 || failures+=("$name: meson test")
  count_meson "$dir"
  echo "=== $name: integration tests (pytest)"
  local junit="$dir/pytest-junit.xml"
  SM_BUILD_DIR="$root/$dir" $PY -m pytest -q -p no:cacheprovider --junitxml="$junit" \
    test/integration || failures+=("$name: pytest")
  if [ -f "$junit" ]; then
    local t f e s
    t=$(grep -o 'tests="[0-9]*"' "$junit" | head -1 | tr -dc 0-9)
    f=$(grep -o 'failures="[0-9]*"' "$junit" | head -1 | tr -dc 0-9)
    e=$(grep -o 'errors="[0-9]*"' "$junit" | head -1 | tr -dc 0-9)
    s=$(grep -o 'skipped="[0-9]*"' "$junit" | head -1 | tr -dc 0-9)
    passed=$((passed + ${t:-0} - ${f:-0} - ${e:-0} - ${s:-0}))
    failed=$((failed + ${f:-0} + ${e:-0}))
  fi
}

# Style is checked by the tools, not by review (docs/conventions.md).
echo "=== clang-format check"
if command -v clang-format >/dev/null; then
  unformatted=$(for f in $(git ls-files 'src/*.[ch]' 'test/unit/*.[ch]' 'bench/*.[ch]' 2>/dev/null); do
    clang-format --dry-run -Werror "$f" >/dev/null 2>&1 || echo "$f"
  done)
  if [ -n "$unformatted" ]; then
    echo "not formatted (run clang-format -i):"
    echo "$unformatted"
    failures+=("clang-format")
    failed=$((failed + 1))
  else
    passed=$((passed + 1))
  fi
fi

run_suite "release" build
if [ "$quick" -eq 0 ]; then
  # Sanitizers: leaks, overflows, use-after-free and undefined behaviour abort the test.
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:strict_string_checks=1"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
  run_suite "asan+ubsan" build-asan -Db_sanitize=address,undefined -Db_lundef=false \
    -Dbuildtype=debug
fi

if [ "$quick" -eq 0 ]; then
  # Fuzzing, short form (docs/testing.md): replays the seed corpora and every earlier crash
  # input, then runs each target 100,000 times from a fixed seed (the same run everywhere); a
  # crash, leak or oracle failure fails the suite.
  echo "=== fuzz (short): scripts/fuzz.sh --short"
  if bash scripts/fuzz.sh --short; then
    passed=$((passed + 1))
  else
    failures+=("fuzz")
    failed=$((failed + 1))
  fi
fi

echo
for f in "${failures[@]}"; do echo "FAILED STEP: $f"; done
echo "$passed passed, $failed failed"
[ "${#failures[@]}" -eq 0 ] && [ "$failed" -eq 0 ]
