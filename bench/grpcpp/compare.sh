#!/usr/bin/env bash
# Side by side in one run: sirius-manager's gRPC transport against a gRPC C++ server of the same
# service (bench/grpcpp/server.cc: async API, one completion queue drained by one thread).
# Each server in turn is pinned to core 0, the client load to core 1:
#  1. stream throughput: `sirius-agent --count N --heartbeat-interval 0.001 --heartbeat-burst 64`;
#     messages per second per server core = messages counted by the server over the window /
#     the server's CPU seconds over the same window (utime+stime of /proc/PID/stat, all threads).
#     Counters: the manager's GET /api/status agents.heartbeats_total, the C++ server's own
#     AgentMessage count (SIGUSR1 prints it).
#  2. memory per idle stream: RSS growth of the server with IDLE agents connected
#     (--heartbeat-interval 60), divided by IDLE.
# Prints one line per server and phase, then the ratios (ours / C++) against the targets
# (>= 1.5x messages per core, <= 1/5 of the memory per stream).
# Needs a build with the C++ server: libgrpc++-dev, libprotobuf-dev and protobuf-compiler-grpc
# (scripts/setup.sh installs them), then `meson setup build-cmp --buildtype=release &&
# ninja -C build-cmp`.
# Usage: bench/grpcpp/compare.sh [N=1000] [seconds=10] [IDLE=5000] [builddir=build-cmp]
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-1000}
secs=${2:-10}
idle=${3:-5000}
build=${4:-build-cmp}
manager="$build/src/sirius-manager"
agent="$build/src/sirius-agent"
cxx="$build/bench/grpcpp/grpcpp-agent-server"
for b in "$manager" "$agent" "$cxx"; do
  if [ ! -x "$b" ]; then
    echo "compare: $b is missing. Install the packages (scripts/setup.sh) and build:" >&2
    echo "  meson setup $build --buildtype=release --reconfigure && ninja -C $build" >&2
    exit 1
  fi
done
if [ "$(nproc)" -lt 2 ]; then
  echo "compare: needs 2 cores (server on core 0, agents on core 1)" >&2
  exit 1
fi

tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT
hz=$(getconf CLK_TCK)
port=$((20000 + RANDOM % 20000))

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
now() { date +%s.%N; }
stop() { # pid...: SIGTERM, then wait for each
  kill "$@" 2>/dev/null || true
  for p in "$@"; do wait "$p" 2>/dev/null || true; done
}

# ---- our manager ----
admin=0
m_start() {
  port=$((port + 2))
  admin=$((port + 1))
  GRPC_SERVER_ADDR=127.0.0.1:$port ADMIN_API_ADDR=127.0.0.1:$admin METRICS_ADDR=127.0.0.1:0 \
    APP_ENV=development SIRIUS_LOG_LEVEL=warn taskset -c 0 "$manager" 2>>"$tmp/manager.log" &
  spid=$!
  for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$admin/health" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "compare: sirius-manager did not start (see below)" >&2
  tail -5 "$tmp/manager.log" >&2
  exit 1
}
m_count() { curl -fsS "http://127.0.0.1:$admin/api/status" | grep -o '"heartbeats_total":[0-9]*' | tr -dc 0-9; }
m_streams() { curl -fsS "http://127.0.0.1:$admin/api/agents?limit=1" | grep -o '"total":[0-9]*' | tr -dc 0-9; }

# ---- the C++ server ----
c_start() {
  port=$((port + 2))
  taskset -c 0 "$cxx" "127.0.0.1:$port" >"$tmp/cxx.out" 2>"$tmp/cxx.log" &
  spid=$!
  for _ in $(seq 100); do grep -q listening "$tmp/cxx.log" 2>/dev/null && return; sleep 0.1; done
  echo "compare: grpcpp-agent-server did not start" >&2
  tail -5 "$tmp/cxx.log" >&2
  exit 1
}
c_line() { # asks for the counters line (SIGUSR1) and prints it once written
  local before
  before=$(wc -l <"$tmp/cxx.out")
  kill -USR1 "$spid"
  for _ in $(seq 200); do
    [ "$(wc -l <"$tmp/cxx.out")" -gt "$before" ] && break
    sleep 0.01
  done
  tail -1 "$tmp/cxx.out"
}
c_count() { c_line | sed -n 's/.*messages=\([0-9]*\).*/\1/p'; }
c_streams() { c_line | sed -n 's/.*streams=\([0-9]*\).*/\1/p'; }

# throughput KIND(m|c) -> sets r_got r_rate r_cpu r_pc (no subshell: server pids stay jobs of
# this shell, so the EXIT trap stops them if a step fails)
throughput() {
  local k=$1
  "${k}_start"
  SIRIUS_LOG_LEVEL=warn taskset -c 1 "$agent" --server 127.0.0.1:$port --count "$n" \
    --id-prefix hb- --heartbeat-interval 0.001 --heartbeat-burst 64 2>>"$tmp/agents.log" &
  local apid=$!
  for _ in $(seq 300); do [ "$("${k}_streams")" = "$n" ] && break; sleep 0.1; done
  local got
  got=$("${k}_streams")
  sleep 2 # warm-up
  local h0 c0 t0 h1 c1 t1
  h0=$("${k}_count"); c0=$(cpu_ticks $spid); t0=$(now)
  sleep "$secs"
  h1=$("${k}_count"); c1=$(cpu_ticks $spid); t1=$(now)
  stop $apid
  stop $spid
  r_got=$got
  read -r r_rate r_cpu r_pc < <(awk -v h0="$h0" -v h1="$h1" -v t0="$t0" -v t1="$t1" -v c0="$c0" \
    -v c1="$c1" -v hz="$hz" 'BEGIN {
    dt = t1 - t0; cpu = (c1 - c0) / hz / dt; rate = (h1 - h0) / dt;
    printf "%.0f %.3f %.0f\n", rate, cpu, rate / (cpu > 0 ? cpu : 1) }')
}

# idle_memory KIND -> sets r_got r_before r_after r_per r_reg
idle_memory() {
  local k=$1
  "${k}_start"
  sleep 0.5
  local before
  before=$(rss_kb $spid)
  SIRIUS_LOG_LEVEL=warn taskset -c 1 "$agent" --server 127.0.0.1:$port --count "$idle" \
    --id-prefix idle- --heartbeat-interval 60 --ramp-ms 3000 \
    --source-addrs "$(seq -s, -f '127.0.0.%g' 2 9)" 2>>"$tmp/agents.log" &
  local apid=$! start got reg after
  start=$(now)
  for _ in $(seq 600); do [ "$("${k}_streams")" = "$idle" ] && break; sleep 0.2; done
  got=$("${k}_streams")
  reg=$(now)
  sleep 3 # let allocations settle
  after=$(rss_kb $spid)
  stop $apid
  stop $spid
  r_got=$got r_before=$before r_after=$after
  read -r r_per r_reg < <(awk -v b="$before" -v a="$after" -v n="$idle" -v s="$start" -v r="$reg" \
    'BEGIN { printf "%.0f %.1f\n", (a - b) * 1024 / n, r - s }')
}

echo "compare: N=$n seconds=$secs idle=$idle build=$build, servers on core 0, agents on core 1" \
  "($(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $(nproc) cores, $(date -u +%FT%TZ))"
throughput m
m_pc=$r_pc
echo "ours   throughput: streams=$r_got/$n msgs_per_s=$r_rate server_cpu=$r_cpu cores msgs_per_core_s=$r_pc"
throughput c
c_pc=$r_pc
echo "grpc++ throughput: streams=$r_got/$n msgs_per_s=$r_rate server_cpu=$r_cpu cores msgs_per_core_s=$r_pc"
idle_memory m
mi_per=$r_per
echo "ours   idle: streams=$r_got/$idle rss_before_kb=$r_before rss_after_kb=$r_after bytes_per_stream=$r_per connect_s=$r_reg"
idle_memory c
ci_per=$r_per
echo "grpc++ idle: streams=$r_got/$idle rss_before_kb=$r_before rss_after_kb=$r_after bytes_per_stream=$r_per connect_s=$r_reg"
awk -v mpc="$m_pc" -v cpc="$c_pc" -v mm="$mi_per" -v cm="$ci_per" 'BEGIN {
  r1 = cpc > 0 ? mpc / cpc : 0; r2 = cm > 0 ? mm / cm : 0;
  printf "ratio msgs_per_core ours/grpc++ = %.2f (target >= 1.5: %s)\n", r1, (r1 >= 1.5 ? "met" : "NOT met");
  inv = r2 > 0 ? 1 / r2 : 0; ok = r2 > 0 && r2 <= 0.2;
  printf "ratio bytes_per_idle_stream ours/grpc++ = %.3f (1/%.1f; target <= 0.2: %s)\n", r2, inv,
    (ok ? "met" : "NOT met") }'
