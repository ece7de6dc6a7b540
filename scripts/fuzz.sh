#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ with clang-14 (ASan+UBSan) and runs them: first the
# committed seeds and regression inputs (fuzz/corpus/<target>/, fuzz/crashes/<target>/) are
# replayed, then each target fuzzes for the given time or number of executions. New corpus
# entries go to build-fuzz/corpus/<target>/ (not the repo), crashes to
# build-fuzz/artifacts/<target>/. Exits non-zero when any target crashes, leaks, times out or
# trips an oracle, naming the input.
#
# Usage: scripts/fuzz.sh [--short] [--time SECONDS] [--runs N] [target...]
#   --short         what scripts/test.sh runs: replay, then 100,000 executions per target from
#                   a fixed seed and only the committed corpus, so the run is the same on every
#                   machine and a failure reproduces (the exploring forms below find new bugs;
#                   each becomes a regression input in fuzz/crashes/)
#   --time SECONDS  per target (default 60; the bench form: --time 1800 or --runs 10000000)
#   --runs N        stop a target after N executions (whichever comes first with --time)
#   targets         grpc_frame grpc_session http_admin amqp_intake settings keyfiles (default all)
# Environment: FUZZ_STRICT_UTF8=1 also fails on invalid UTF-8 in JSON answers (issue 12 items
# 5 and 6); FUZZ_BUILD_DIR (default build-fuzz); FUZZ_JOBS (parallel workers per target, 1).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
all=(grpc_frame grpc_session http_admin amqp_intake settings keyfiles)
time_s=60
runs=""
short=0
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
  --short) short=1; time_s=300; runs=100000 ;;
  --time) time_s=$2; shift ;;
  --runs) runs=$2; shift ;;
  -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
  *) targets+=("$1") ;;
  esac
  shift
done
[ "${#targets[@]}" -eq 0 ] && targets=("${all[@]}")
bdir=${FUZZ_BUILD_DIR:-build-fuzz}
jobs=${FUZZ_JOBS:-1}

if ! command -v clang-14 >/dev/null; then
  echo "fuzz: clang-14 missing (scripts/setup.sh installs it)" >&2
  exit 1
fi
if [ ! -f "$bdir/build.ninja" ]; then
  CC=clang-14 meson setup "$bdir" -Dfuzz=true -Db_sanitize=address,undefined -Db_lundef=false \
    -Dslow_tests=false >/dev/null || exit 1
fi
bins=()
for t in "${targets[@]}"; do bins+=("fuzz/fuzz-${t//_/-}"); done
ninja -C "$bdir" "${bins[@]}" >/dev/null || { ninja -C "$bdir" "${bins[@]}"; exit 1; }

# Fixed options (not the caller's, e.g. scripts/test.sh's), so a run means the same everywhere.
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:allocator_may_return_null=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
failed=()
printf '%-14s %10s %8s %8s %7s %6s  %s\n' target execs exec/s cov ft corpus result
for t in "${targets[@]}"; do
  bin="$root/$bdir/fuzz/fuzz-${t//_/-}"
  work="$root/$bdir/corpus/$t"
  art="$root/$bdir/artifacts/$t"
  log="$root/$bdir/fuzz-$t.log"
  mkdir -p "$work" "$art"
  opts=(-close_fd_mask=3 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
    "-artifact_prefix=$art/")
  [ "$t" = settings ] && opts+=("-dict=$root/fuzz/settings.dict")
  # Replay: every seed and every earlier crash must pass.
  replay=("$root/fuzz/corpus/$t")
  [ -d "fuzz/crashes/$t" ] && replay+=("$root/fuzz/crashes/$t")
  if ! "$bin" "${opts[@]}" -runs=0 "${replay[@]}" >"$log" 2>&1; then
    printf '%-14s %10s %8s %8s %7s %6s  %s\n' "$t" - - - - - "REPLAY FAILED (see $log)"
    failed+=("$t")
    continue
  fi
  run_opts=("-max_total_time=$time_s")
  if [ "$short" = 1 ]; then
    # Deterministic: fixed seed, fixed number of runs, new units kept apart from the corpus a
    # longer run left behind.
    run_opts+=(-seed=1)
    work="$root/$bdir/corpus-short/$t"
    rm -rf "$work"
    mkdir -p "$work"
  fi
  [ -n "$runs" ] && run_opts+=("-runs=$runs")
  [ "$jobs" -gt 1 ] && run_opts+=("-fork=$jobs")
  "$bin" "${opts[@]}" "${run_opts[@]}" "$work" "$root/fuzz/corpus/$t" >>"$log" 2>&1
  rc=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
  eps=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
  last=$(grep -E '^#[0-9]+' "$log" | tail -1)
  cov=$(echo "$last" | grep -o 'cov: [0-9]*' | grep -o '[0-9]*')
  ft=$(echo "$last" | grep -o 'ft: [0-9]*' | grep -o '[0-9]*')
  corp=$(echo "$last" | grep -o 'corp: [0-9]*' | grep -o '[0-9]*')
  result=ok
  if [ "$rc" -ne 0 ]; then
    result="CRASH: $(ls -t "$art" 2>/dev/null | head -1) (see $log)"
    failed+=("$t")
  fi
  printf '%-14s %10s %8s %8s %7s %6s  %s\n' "$t" "${execs:-?}" "${eps:-?}" "${cov:-?}" \
    "${ft:-?}" "${corp:-?}" "$result"
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: failed: ${failed[*]} (reproduce: $bdir/fuzz/fuzz-<target> <input>)"
  exit 1
fi
echo "fuzz: all ${#targets[@]} targets passed"
