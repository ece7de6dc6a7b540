#!/usr/bin/env bash
# Memory per idle connected agent: RSS growth of sirius-manager with N agents connected
# (sirius-agent --count N, connections spread over loopback source addresses), divided by N.
# Env: PROTOCOL=hello measures hello.HelloService agents (SiriusScan's) instead of scan ones.
# Usage: bench/idle-agents.sh [N=10000] [builddir=build]
set -euo pipefail
protocol=${PROTOCOL:-scan} # the agents' protocol: scan or hello (hello.HelloService)
cd "$(dirname "$0")/.."
n=${1:-10000}
build=${2:-build}
port=$((20000 + RANDOM % 20000))
admin=$((port + 1))
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
total() { curl -fsS "http://127.0.0.1:$admin/api/agents?limit=1" | grep -o '"total":[0-9]*' | tr -dc 0-9; }

GRPC_SERVER_ADDR=127.0.0.1:$port ADMIN_API_ADDR=127.0.0.1:$admin METRICS_ADDR=127.0.0.1:0 \
  APP_ENV=development SIRIUS_LOG_LEVEL=warn "$build/src/sirius-manager" 2>"$tmp/manager.log" &
mpid=$!
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$admin/health" >/dev/null 2>&1 && break; sleep 0.1; done
sleep 0.5
before=$(rss_kb $mpid)

addrs=$(seq -s, -f '127.0.0.%g' 2 9)
SIRIUS_LOG_LEVEL=warn "$build/src/sirius-agent" --server 127.0.0.1:$port --count "$n" \
  --id-prefix idle- --heartbeat-interval 60 --ramp-ms 3000 --source-addrs "$addrs" \
  --capabilities scan_type=nmap,os=linux --protocol "$protocol" 2>"$tmp/agents.log" &
start=$(date +%s.%N)
for _ in $(seq 600); do
  [ "$(total)" = "$n" ] && break
  sleep 0.2
done
got=$(total)
registered=$(date +%s.%N)
sleep 3 # let allocations settle
after=$(rss_kb $mpid)
per=$(( (after - before) * 1024 / n ))
echo "protocol=$protocol agents=$got/$n rss_before_kb=$before rss_after_kb=$after per_agent_bytes=$per" \
  "register_s=$(echo "$registered - $start" | bc)"
