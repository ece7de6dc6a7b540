#!/usr/bin/env bash
# Admin API throughput with wrk over keep-alive: GET /api/status, GET /api/agents/{id} and
# POST /api/commands, the manager pinned to core 0 and wrk to core 1. Rate limits are switched
# off for the measurement (ADMIN_RATE_LIMIT_RPS=0, ADMIN_RATE_LIMIT_IP_RPS=0); an admin key is
# configured so the authentication path is measured too.
# Usage: bench/admin-wrk.sh [seconds=10] [connections=64] [builddir=build]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conns=${2:-64}
build=${3:-build}
port=$((20000 + RANDOM % 20000))
admin=$((port + 1))
key=bench-admin-key
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT

GRPC_SERVER_ADDR=127.0.0.1:$port ADMIN_API_ADDR=127.0.0.1:$admin METRICS_ADDR=127.0.0.1:0 \
  ADMIN_API_KEY=$key ADMIN_RATE_LIMIT_RPS=0 ADMIN_RATE_LIMIT_IP_RPS=0 SIRIUS_LOG_LEVEL=warn \
  COMMAND_QUEUE_SIZE=10000000 taskset -c 0 "$build/src/sirius-manager" 2>"$tmp/manager.log" &
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$admin/health" >/dev/null 2>&1 && break; sleep 0.1; done
SIRIUS_LOG_LEVEL=warn taskset -c 1 "$build/src/sirius-agent" --server 127.0.0.1:$port --count 100 \
  --id-prefix wrk- --heartbeat-interval 60 2>"$tmp/agents.log" &
for _ in $(seq 100); do
  curl -fsS -H "Authorization: Bearer $key" "http://127.0.0.1:$admin/api/agents/wrk-100" >/dev/null 2>&1 && break
  sleep 0.1
done

cat >"$tmp/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $key"
wrk.body = '{"type":"echo","params":{"x":"1"},"agent_id":"no-such-agent"}'
LUA

run() { # name url [script]
  local name=$1 url=$2 script=${3:-}
  local out
  if [ -n "$script" ]; then
    out=$(taskset -c 1 wrk -t1 -c"$conns" -d"${secs}s" --latency -s "$script" "$url")
  else
    out=$(taskset -c 1 wrk -t1 -c"$conns" -d"${secs}s" --latency -H "Authorization: Bearer $key" "$url")
  fi
  local rps p50 p99 non2xx
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
  p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
  non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
  echo "$name requests_per_s=$rps p50=$p50 p99=$p99 non_2xx=${non2xx:-0}"
}

run "GET /api/status" "http://127.0.0.1:$admin/api/status"
run "GET /api/agents/{id}" "http://127.0.0.1:$admin/api/agents/wrk-42"
run "POST /api/commands" "http://127.0.0.1:$admin/api/commands" "$tmp/post.lua"
