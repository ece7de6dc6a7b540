#!/usr/bin/env bash
# Sets up the machine, builds, and runs the manager on loopback with a handful of simulated
# agents, then tells where to look. Ctrl-C stops everything.
# Environment: AGENTS (default 5), GRPC_PORT (50051), ADMIN_PORT (8080), METRICS_PORT (2112).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

bash scripts/setup.sh
[ -f build/build.ninja ] || meson setup build
ninja -C build

agents=${AGENTS:-5}
grpc_port=${GRPC_PORT:-50051}
admin_port=${ADMIN_PORT:-8080}
metrics_port=${METRICS_PORT:-2112}
rundir=$(mktemp -d /tmp/sirius-run.XXXXXX)
pids=()

cleanup() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "stopped; logs are in $rundir"
}
trap cleanup EXIT INT TERM

GRPC_SERVER_ADDR="127.0.0.1:$grpc_port" ADMIN_API_ADDR="127.0.0.1:$admin_port" \
  METRICS_ADDR="127.0.0.1:$metrics_port" APP_ENV="${APP_ENV:-development}" \
  SIRIUS_LOG_FORMAT="${SIRIUS_LOG_FORMAT:-console}" \
  ./build/src/sirius-manager >"$rundir/manager.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$admin_port/health" >/dev/null 2>&1 && break
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$rundir/manager.log"; exit 1; }
  sleep 0.1
done

./build/src/sirius-agent --server "127.0.0.1:$grpc_port" --count "$agents" --id-prefix demo-agent- \
  --capabilities "scan_type=nmap,os=linux" --segment 127.0.0.0/8 --max-concurrent 2 \
  --heartbeat-interval 5 >"$rundir/agents.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 100); do
  n=$(curl -fsS "http://127.0.0.1:$admin_port/api/agents" 2>/dev/null | grep -o '"total":[0-9]*' | tr -dc 0-9 || true)
  [ "${n:-0}" -ge "$agents" ] && break
  sleep 0.1
done

cat <<MSG

sirius-manager is running with $agents simulated agents (logs: $rundir).

  Connected agents:   curl -s http://127.0.0.1:$admin_port/api/agents
  One agent:          curl -s http://127.0.0.1:$admin_port/api/agents/demo-agent-1
  Health / readiness: curl -s http://127.0.0.1:$admin_port/health ; curl -s http://127.0.0.1:$admin_port/ready
  Agent gRPC listener: 127.0.0.1:$grpc_port (h2c)

Press Ctrl-C to stop.
MSG
wait "${pids[0]}"
