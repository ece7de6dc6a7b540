#!/usr/bin/env bash
# Capacity benchmarks (issue 6), one run on loopback that stops by itself (~10 minutes):
#  1. the design's capacity table (small, medium, large, enterprise): sirius-loadtest with N
#     in-process agents offering `sleep` commands at a fixed rate over REST, against a manager
#     with a real redis-server and rabbitmq-server; reports agents, commands/s sustained,
#     concurrent commands (GET /api/status commands.inflight, sampled) and the manager's RSS;
#  2. how far one process goes with agents: FLEET agents (two or more sirius-agent processes,
#     several loopback source addresses) -> registered count, time, memory per agent; then a
#     reconnect storm: SIGTERM the manager, start it again on the same ports, time until the
#     whole fleet is registered again;
#  3. the most commands the manager tracks at once: CMDS `sleep` commands for one busy agent
#     (they all wait queued), REST arrays of 1000, RSS and /api/status sampled, stops at CMDS or
#     a limit (RSS over 2 GB, time, nothing accepted).
# Prints key=value lines; the raw reports stay in $OUT.
#
# Usage: bench/capacity/run.sh [builddir=build-release]
#   env: SIZES ("name:agents:rate:max_concurrent ..."; rate 0: as fast as accepted),
#        SIZE_SECS (20, submission per size),
#        SLEEP_S (2, seconds each sleep command runs), FLEET (19000), AGENT_PROCS (2),
#        CMDS (1000000), CMDS_MAX_S (240), SKIP ("table fleet cmds": parts to skip),
#        OUT (folder for logs and reports; default /tmp/sm-capacity.XXXXXX, kept)
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build-release}
sizes=${SIZES:-"small:10:50:16 medium:50:250:16 large:200:1000:16 enterprise:1000:5000:16"}
size_secs=${SIZE_SECS:-20}
sleep_s=${SLEEP_S:-2}
fleet=${FLEET:-19000}
procs=${AGENT_PROCS:-2}
cmds=${CMDS:-1000000}
cmds_max_s=${CMDS_MAX_S:-240}
skip=${SKIP:-}
here=bench/capacity
for b in sirius-manager sirius-agent sirius-loadtest; do
  [ -x "$build/src/$b" ] || { echo "run.sh: $build/src/$b missing (ninja -C $build)" >&2; exit 1; }
done
out=${OUT:-$(mktemp -d /tmp/sm-capacity.XXXXXX)}
mkdir -p "$out"
py=/usr/bin/python3
free_port() { $py -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.2f", b - a}'; }

rpid='' mpid='' bdir='' spid='' apids=()
stop_pid() { [ -n "${1:-}" ] && kill "$1" 2>/dev/null && wait "$1" 2>/dev/null || true; }
stop_agents() {
  local p
  for p in "${apids[@]}"; do stop_pid "$p"; done
  apids=()
}
# SIGTERM, up to 20 s of graceful drain, then SIGKILL.
stop_manager() {
  [ -n "$mpid" ] || return 0
  kill "$mpid" 2>/dev/null || true
  local i
  for i in $(seq 200); do kill -0 "$mpid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$mpid" 2>/dev/null || true
  wait "$mpid" 2>/dev/null || true
  mpid=''
}
cleanup() {
  stop_pid "$spid"
  stop_agents
  stop_manager
  stop_pid "$rpid"
  [ -n "$bdir" ] && scripts/rabbitmq-test-broker.sh stop "$bdir" >/dev/null 2>&1 || true
}
trap cleanup EXIT

echo "machine: nproc=$(nproc) cpu=\"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')\" mem=$(awk '/MemTotal/ {printf "%.0fGiB", $2/1048576}' /proc/meminfo) nofile=$(ulimit -n) date=$(date -u +%Y-%m-%dT%H:%MZ) build=$build out=$out"

# ---- servers ----
rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --dir "$out" --appendonly yes \
  --appendfsync everysec --save "" --daemonize no --logfile "$out/redis.log" \
  --maxclients 1000 --protected-mode no >/dev/null 2>&1 &
rpid=$!
read -r aport bdir < <(scripts/rabbitmq-test-broker.sh start)
for _ in $(seq 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis_mem() { redis-cli -p "$rport" info memory | awk -F: '/^used_memory:/ {printf "%d", $2/1048576}'; }

gport=$(free_port)
admin=$(free_port)
# start_manager LOGNAME [VAR=value ...]: a manager on $gport/$admin with the real store and
# broker; waits for /ready.
start_manager() {
  local name=$1
  shift
  env GRPC_SERVER_ADDR=127.0.0.1:$gport ADMIN_API_ADDR=127.0.0.1:$admin METRICS_ADDR=127.0.0.1:0 \
    APP_ENV=development SIRIUS_LOG_LEVEL=warn INSTANCE_ID=capacity \
    VALKEY_HOST=127.0.0.1 VALKEY_PORT="$rport" RABBITMQ_URL="amqp://guest:guest@127.0.0.1:$aport/" \
    AMQP_COMMAND_QUEUE=cap-cmd AMQP_RESULT_QUEUE=cap-res MAX_AGENT_LOAD=1.0 \
    ADMIN_RATE_LIMIT_RPS=0 ADMIN_RATE_LIMIT_IP_RPS=0 "$@" \
    "$build/src/sirius-manager" >>"$out/manager-$name.log" 2>&1 &
  mpid=$!
  local i
  for i in $(seq 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$admin/ready")" = 200 ] && return 0
    kill -0 "$mpid" 2>/dev/null || { echo "manager exited, see $out/manager-$name.log" >&2; return 1; }
    sleep 0.05
  done
  echo "manager not ready after 15 s" >&2
  return 1
}
registered() { curl -fsS "http://127.0.0.1:$admin/api/agents?limit=1" 2>/dev/null | grep -o '"total":[0-9]*' | tr -dc 0-9; }
status_field() { curl -fsS "http://127.0.0.1:$admin/api/status" | grep -o "\"$1\":[0-9]*" | head -1 | tr -dc 0-9; }
# Fresh state between parts: empty redis and broker queues.
reset_servers() {
  redis-cli -p "$rport" flushall >/dev/null
  local node
  node=$(cat "$bdir/node")
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u rabbitmq -- env HOME="$bdir/home" /usr/lib/rabbitmq/bin/rabbitmqctl -q -n "$node" \
      purge_queue cap-res >/dev/null 2>&1 || true
  fi
}
jget() { $py -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {"json": json}, {"d": d}))' "$@"; }

# ---- 1. capacity table ----
if [[ " $skip " != *" table "* ]]; then
  for spec in $sizes; do
    IFS=: read -r name agents rate maxc <<<"$spec"
    reset_servers
    # Queue room for the whole offered load: the table measures throughput, not refusals.
    # (rate 0: as fast as the manager accepts, 200,000 waiting commands admitted)
    qsize=$((rate * size_secs + 10000))
    [ "$rate" = 0 ] && qsize=200000
    start_manager "$name" COMMAND_QUEUE_SIZE=$qsize
    rss0=$(rss_kb "$mpid")
    $py $here/sample.py --admin "http://127.0.0.1:$admin" --pid "$mpid" --interval 0.5 \
      --log "$out/samples-$name.log" >"$out/sample-$name.json" &
    spid=$!
    "$build/src/sirius-loadtest" --agents "$agents" --commands 0 --commands-per-agent 0 \
      --duration "$size_secs" --rate "$rate" --types sleep:100 --sleep-seconds "$sleep_s" \
      --max-concurrent "$maxc" --heartbeat-interval 3600 --ramp-up 1 --batch 1000 \
      --connections 4 --drain-timeout 30 --command-timeout 60 --report-interval 5 \
      --manager-api "http://127.0.0.1:$admin" --server "127.0.0.1:$gport" \
      --source-addrs 127.0.0.2,127.0.0.3 --id-prefix "$name-" --format json \
      --output "$out/loadtest-$name.json" >"$out/loadtest-$name.log" 2>&1 || true
    stop_pid "$spid"
    spid=''
    f=$out/loadtest-$name.json
    s=$out/sample-$name.json
    if [ -s "$f" ]; then
      echo "table_$name: agents=$(jget "$f" 'd["agents"]["connected"]')/$agents" \
        "offered=${rate}/s x ${size_secs}s sleep=${sleep_s}s max_concurrent=$maxc" \
        "commands=$(jget "$f" 'd["total"]') successful=$(jget "$f" 'd["successful"]')" \
        "all_final=$(jget "$f" 'd["all_final"]')" \
        "throughput=$(jget "$f" 'round(d["throughput"])')/s" \
        "p50_ms=$(jget "$f" 'd["latency_ms"]["p50"]') p99_ms=$(jget "$f" 'd["latency_ms"]["p99"]')" \
        "max_inflight=$(jget "$s" 'd["max_inflight"]') max_waiting=$(jget "$s" 'd["max_waiting"]')" \
        "rss_mb=$((rss0 / 1024))->$(($(jget "$s" 'd["max_rss_kb"]') / 1024)) redis_mb=$(redis_mem)" \
        "store_retries=$(status_field store_retries) errors=$(jget "$f" 'json.dumps(d["errors"]).replace(" ","")')"
    else
      echo "table_$name: no report (see $out/loadtest-$name.log)"
    fi
    stop_manager
  done
fi

# ---- 2. fleet of agents, then a reconnect storm ----
if [[ " $skip " != *" fleet "* ]]; then
  reset_servers
  start_manager fleet
  sleep 0.5
  rss0=$(rss_kb "$mpid")
  per=$((fleet / procs))
  t0=$(now)
  for p in $(seq "$procs"); do
    n=$per
    [ "$p" = "$procs" ] && n=$((fleet - per * (procs - 1)))
    # Eight source addresses per process, each process its own set.
    addrs=$(seq -s, -f "127.0.$p.%g" 2 9)
    SIRIUS_LOG_LEVEL=warn "$build/src/sirius-agent" --server "127.0.0.1:$gport" --count "$n" \
      --id-prefix "fleet$p-" --heartbeat-interval 60 --ramp-ms 5000 --source-addrs "$addrs" \
      --capabilities scan_type=nmap,os=linux >"$out/agents-$p.log" 2>&1 &
    apids+=($!)
  done
  got=0
  for _ in $(seq 1200); do
    got=$(registered || echo 0)
    [ "${got:-0}" -ge "$fleet" ] && break
    sleep 0.1
  done
  reg_s=$(since "$t0")
  sleep 3 # allocations settle
  rss1=$(rss_kb "$mpid")
  got=$(registered || echo 0)
  echo "fleet: registered=$got/$fleet agent_procs=$procs ramp_ms=5000 register_s=$reg_s" \
    "rss_mb=$((rss0 / 1024))->$((rss1 / 1024)) per_agent_bytes=$(((rss1 - rss0) * 1024 / (got > 0 ? got : 1)))" \
    "manager_fds=$(ls /proc/$mpid/fd | wc -l)"

  # Reconnect storm: the agents back off (100 ms base, 30 s cap, jitter) while it is down.
  t0=$(now)
  stop_manager
  down_s=$(since "$t0")
  t1=$(now)
  start_manager storm
  ready_s=$(since "$t1")
  first=$(registered || echo 0)
  got=0
  for _ in $(seq 1800); do
    got=$(registered || echo 0)
    [ "${got:-0}" -ge "$fleet" ] && break
    sleep 0.1
  done
  echo "storm: registered=$got/$fleet stop_s=$down_s restart_ready_s=$ready_s at_ready=$first" \
    "all_registered_s=$(since "$t1") (from the new process start)" \
    "rss_mb=$(($(rss_kb "$mpid") / 1024))"
  stop_agents
  stop_manager
fi

# ---- 3. commands tracked at once ----
if [[ " $skip " != *" cmds "* ]]; then
  reset_servers
  start_manager cmds COMMAND_QUEUE_SIZE=$((cmds + 100000)) COMMAND_TIMEOUT=7200
  rss0=$(rss_kb "$mpid")
  SIRIUS_LOG_LEVEL=warn "$build/src/sirius-agent" --server "127.0.0.1:$gport" --id cap-busy \
    --max-concurrent 1 --heartbeat-interval 3600 >"$out/agents-busy.log" 2>&1 &
  apids+=($!)
  for _ in $(seq 100); do [ "$(registered || echo 0)" = 1 ] && break; sleep 0.1; done
  # Make the agent busy for the whole run: everything after waits for it.
  curl -fsS -o /dev/null -X POST -H 'Content-Type: application/json' \
    -d '{"id":"cap-blocker","type":"sleep","agent_id":"cap-busy","params":{"seconds":"3600"},"timeout_seconds":7200}' \
    "http://127.0.0.1:$admin/api/commands"
  for _ in $(seq 100); do [ "$(status_field inflight)" = 1 ] && break; sleep 0.1; done
  $py $here/flood.py --port "$admin" --pid "$mpid" --agent cap-busy --n "$cmds" --conns 4 \
    --batch 1000 --every 2 --rss-limit-mb 2048 --max-seconds "$cmds_max_s" --stall-seconds 30 \
    >"$out/flood.json" 2>"$out/flood.log" || true
  f=$out/flood.json
  if [ -s "$f" ]; then
    acc=$(jget "$f" 'd["accepted"]')
    rss1=$(jget "$f" 'd["rss_kb"]')
    echo "commands: accepted=$acc/$cmds tracked_active=$(jget "$f" 'd["active"]')" \
      "elapsed_s=$(jget "$f" 'd["elapsed_s"]') accept_rate=$(jget "$f" 'd["accept_rate"]')/s" \
      "rss_mb=$((rss0 / 1024))->$((rss1 / 1024)) max_rss_mb=$(($(jget "$f" 'd["max_rss_kb"]') / 1024))" \
      "per_command_bytes=$(((rss1 - rss0) * 1024 / (acc > 0 ? acc : 1))) redis_mb=$(redis_mem)" \
      "refused=$(jget "$f" 'json.dumps(d["refused"]).replace(" ","")')" \
      "stop=\"$(jget "$f" 'd["stop_reason"]')\""
  else
    echo "commands: no report (see $out/flood.log)"
  fi
  stop_agents
  stop_manager
fi
echo "manager_error_lines: $(cat "$out"/manager-*.log | grep -c '"level":"error"' || true)"
