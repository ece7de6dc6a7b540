#!/usr/bin/env bash
# Sets up the machine, builds, and runs the manager on loopback with a handful of simulated
# agents, backed by a local redis-server and rabbitmq-server (data in a temporary folder) unless
# VALKEY_HOST / RABBITMQ_URL point elsewhere. Prints where to look; Ctrl-C stops everything.
# Environment: AGENTS (default 5), GRPC_PORT (50051), ADMIN_PORT (8080), METRICS_PORT (2112).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
[ -f build/build.ninja ] || meson setup build
ninja -C build

agents=${AGENTS:-5}
grpc_port=${GRPC_PORT:-50051}
admin_port=${ADMIN_PORT:-8080}
metrics_port=${METRICS_PORT:-2112}
rundir=$(mktemp -d /tmp/sirius-run.XXXXXX)
chmod 755 "$rundir"
pids=()
broker_dir=""

cleanup() {
  trap - EXIT INT TERM
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[$i]}" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -n "$broker_dir" ] && scripts/rabbitmq-test-broker.sh stop "$broker_dir" >/dev/null 2>&1 || true
  echo "stopped; logs are in $rundir"
}
trap cleanup EXIT INT TERM

free_port() {
  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

if [ -z "${VALKEY_HOST:-}" ]; then
  redis_port=$(free_port)
  mkdir -p "$rundir/redis"
  redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$rundir/redis" --appendonly yes \
    --save "" --daemonize no >"$rundir/redis.log" 2>&1 &
  pids+=($!)
  export VALKEY_HOST=127.0.0.1 VALKEY_PORT=$redis_port
  echo "redis-server on 127.0.0.1:$redis_port"
fi
if [ -z "${RABBITMQ_URL:-}" ]; then
  echo "starting rabbitmq-server (about 5 s)..."
  read -r amqp_port broker_dir < <(scripts/rabbitmq-test-broker.sh start "$rundir/rabbitmq")
  export RABBITMQ_URL="amqp://guest:guest@127.0.0.1:$amqp_port/"
  echo "rabbitmq-server on 127.0.0.1:$amqp_port"
fi

GRPC_SERVER_ADDR="127.0.0.1:$grpc_port" ADMIN_API_ADDR="127.0.0.1:$admin_port" \
  METRICS_ADDR="127.0.0.1:$metrics_port" APP_ENV="${APP_ENV:-development}" \
  SIRIUS_LOG_FORMAT="${SIRIUS_LOG_FORMAT:-console}" \
  ./build/src/sirius-manager >"$rundir/manager.log" 2>&1 &
manager=$!
pids+=($manager)

for _ in $(seq 1 200); do
  curl -fsS "http://127.0.0.1:$admin_port/ready" >/dev/null 2>&1 && break
  kill -0 "$manager" 2>/dev/null || { cat "$rundir/manager.log"; exit 1; }
  sleep 0.1
done

./build/src/sirius-agent --server "127.0.0.1:$grpc_port" --count "$agents" --id-prefix demo-agent- \
  --capabilities "scan_type=nmap,os=linux" --segment 127.0.0.0/8 --max-concurrent 2 \
  --heartbeat-interval 5 >"$rundir/agents.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 100); do
  n=$(curl -fsS "http://127.0.0.1:$admin_port/api/agents?limit=1" 2>/dev/null | grep -o '"total":[0-9]*' | tr -dc 0-9 || true)
  [ "${n:-0}" -ge "$agents" ] && break
  sleep 0.1
done

api=http://127.0.0.1:$admin_port
cat <<MSG

sirius-manager is running with $agents simulated agents (logs: $rundir).
It runs with APP_ENV=development and no API key, so /api is open: for production set
ADMIN_API_KEY (docs/operations.md).
Store: redis at $VALKEY_HOST:$VALKEY_PORT; results go to RabbitMQ queue agent-results.

  Connected agents:   curl -s $api/api/agents
  One agent:          curl -s $api/api/agents/demo-agent-1
  Submit a command:   curl -s -X POST $api/api/commands -H 'Content-Type: application/json' \\
                        -d '{"id":"demo-1","type":"scan","params":{"target":"127.0.0.1"}}'
  Read its result:    curl -s $api/api/commands/demo-1
  Health / readiness: curl -s $api/health ; curl -s $api/ready
  Status / metrics:   curl -s $api/api/status ; curl -s http://127.0.0.1:$metrics_port/metrics

Press Ctrl-C to stop.
MSG
wait "$manager"
