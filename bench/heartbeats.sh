#!/usr/bin/env bash
# Heartbeat throughput: messages per second the manager processes on one core while N agents
# (sirius-agent --count N, on the other core) send heartbeats as fast as the manager takes them
# (--heartbeat-interval 0.001 --heartbeat-burst 64: each tick refills the stream's send queue up
# to 32 KiB). The rate is read from the manager's own counter (GET /api/status,
# agents.heartbeats_total) over a measuring window after a warm-up.
# Env: PROTOCOL=hello measures hello.HelloService agents (SiriusScan's) instead of scan ones.
# Usage: bench/heartbeats.sh [N=1000] [seconds=10] [builddir=build]
set -euo pipefail
protocol=${PROTOCOL:-scan} # the agents' protocol: scan or hello (hello.HelloService)
cd "$(dirname "$0")/.."
n=${1:-1000}
secs=${2:-10}
build=${3:-build}
port=$((20000 + RANDOM % 20000))
admin=$((port + 1))
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT

hb() { curl -fsS "http://127.0.0.1:$admin/api/status" | grep -o '"heartbeats_total":[0-9]*' | tr -dc 0-9; }
total() { curl -fsS "http://127.0.0.1:$admin/api/agents?limit=1" | grep -o '"total":[0-9]*' | tr -dc 0-9; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

GRPC_SERVER_ADDR=127.0.0.1:$port ADMIN_API_ADDR=127.0.0.1:$admin METRICS_ADDR=127.0.0.1:0 \
  APP_ENV=development SIRIUS_LOG_LEVEL=warn taskset -c 0 "$build/src/sirius-manager" \
  2>"$tmp/manager.log" &
mpid=$!
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$admin/health" >/dev/null 2>&1 && break; sleep 0.1; done

SIRIUS_LOG_LEVEL=warn taskset -c 1 "$build/src/sirius-agent" --server 127.0.0.1:$port --count "$n" \
  --id-prefix hb- --heartbeat-interval 0.001 --heartbeat-burst 64 --protocol "$protocol" 2>"$tmp/agents.log" &
for _ in $(seq 300); do [ "$(total)" = "$n" ] && break; sleep 0.1; done
sleep 2 # warm-up
h0=$(hb); c0=$(cpu_ticks $mpid); t0=$(date +%s.%N)
sleep "$secs"
h1=$(hb); c1=$(cpu_ticks $mpid); t1=$(date +%s.%N)
hz=$(getconf CLK_TCK)
awk -v h0="$h0" -v h1="$h1" -v t0="$t0" -v t1="$t1" -v c0="$c0" -v c1="$c1" -v hz="$hz" -v n="$n" -v p="$protocol" 'BEGIN {
  dt = t1 - t0; cpu = (c1 - c0) / hz / dt;
  printf "protocol=%s agents=%d heartbeats=%d seconds=%.2f rate_per_s=%.0f manager_cpu=%.2f cores per_core_rate=%.0f\n",
    p, n, h1 - h0, dt, (h1 - h0) / dt, cpu, (h1 - h0) / dt / (cpu > 0 ? cpu : 1) }'
