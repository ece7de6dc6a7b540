#!/usr/bin/env bash
# End-to-end command throughput (issue 3): commands/s through REST (arrays of 1000) and through
# AMQP, accepted -> stored -> dispatched -> result stored -> published, with 1,000 simulated agents
# (one `sirius-agent --count 1000`, echo commands) and a real redis-server and rabbitmq-server on
# loopback; p50/p99 of completed_at - created_at from the published results; every id checked.
# Baselines in the same run: the broker alone (sm-e2e raw: publish with confirms + consume, same
# message size) and redis-server alone (redis-benchmark SET/GET and an EVAL shaped like the
# store's create script, pipelined). Prints key=value lines; stops by itself.
#
# Usage: bench/e2e/run.sh [N=100000] [builddir=build-bench]
#   env: CONNS (REST submitters, 4), AGENTS (1000), MAX_CONCURRENT (4 per agent),
#        PROFILE=1 (perf record the manager during the REST phase; report in $OUT/perf.txt),
#        OUT (folder for logs and the profile; default a temporary folder that is removed
#        unless PROFILE=1 or KEEP=1)
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-100000}
build=${2:-build-bench}
conns=${CONNS:-4}
agents=${AGENTS:-1000}
maxc=${MAX_CONCURRENT:-4}
tool=$build/bench/e2e/sm-e2e
for b in "$tool" "$build/src/sirius-manager" "$build/src/sirius-agent"; do
  [ -x "$b" ] || { echo "run.sh: $b missing (ninja -C $build)" >&2; exit 1; }
done
out=${OUT:-$(mktemp -d /tmp/sm-e2e.XXXXXX)}
mkdir -p "$out"
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

rpid='' mpid='' apid='' bdir=''
stop_pid() { [ -n "$1" ] && kill "$1" 2>/dev/null && wait "$1" 2>/dev/null || true; }
cleanup() {
  # Agents, then the manager (so it does not see its store go away), then the servers.
  stop_pid "$apid"
  stop_pid "$mpid"
  stop_pid "$rpid"
  [ -n "$bdir" ] && scripts/rabbitmq-test-broker.sh stop "$bdir" >/dev/null 2>&1 || true
  if [ -z "${OUT:-}" ] && [ "${PROFILE:-0}" != 1 ] && [ "${KEEP:-0}" != 1 ]; then rm -rf "$out"; fi
}
trap cleanup EXIT

echo "machine: nproc=$(nproc) cpu=\"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')\" date=$(date -u +%Y-%m-%dT%H:%MZ) n=$n agents=$agents max_concurrent=$maxc conns=$conns"

# ---- servers ----
rport=$(free_port)
# Append-only file fsynced every second (the usual production setting), no RDB snapshots.
redis-server --port "$rport" --bind 127.0.0.1 --dir "$out" --appendonly yes \
  --appendfsync everysec --save "" --daemonize no --logfile "$out/redis.log" \
  --protected-mode no >/dev/null 2>&1 &
rpid=$!
read -r aport bdir < <(scripts/rabbitmq-test-broker.sh start)
for _ in $(seq 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done

# ---- baselines ----
# redis alone: 50 clients, pipelines of 16 (the store pipelines its requests on one connection).
rb() { redis-benchmark -p "$rport" -q -c 50 -P 16 "$@" 2>/dev/null | tr '\r' '\n' | grep -o '[^ ]*: [0-9.]* requests per second' | tail -1; }
echo "redis_set: $(rb -n 1000000 -r 1000000 -t set | awk '{print $2}') ops/s"
echo "redis_get: $(rb -n 1000000 -r 1000000 -t get | awk '{print $2}') ops/s"
# One EVAL doing what the store's create script does (HSET of 4 fields, 4 ZADDs).
lua="local k='b:cmd:'..ARGV[1] redis.call('HSET',k,'s','queued','a','','m',ARGV[1],'j',ARGV[2]) redis.call('ZADD','b:all',0,ARGV[1]) redis.call('ZADD','b:st:queued',0,ARGV[1]) redis.call('ZADD','b:active',0,ARGV[1]) redis.call('ZADD','b:type:echo',0,ARGV[1]) return 1"
echo "redis_eval_create: $(rb -n 300000 -r 1000000 eval "$lua" 0 __rand_int__ '{"id":"x","type":"echo","params":{"n":"1"},"status":"queued"}' | awk '{print $2}') ops/s"
redis-cli -p "$rport" flushall >/dev/null
echo "broker_raw: $("$tool" raw --amqp-port "$aport" --queue bench-raw --n "$n" --size 100 --window 1000)"

# ---- manager and agents ----
gport=$(free_port)
admin=$(free_port)
env GRPC_SERVER_ADDR=127.0.0.1:$gport ADMIN_API_ADDR=127.0.0.1:$admin METRICS_ADDR=127.0.0.1:0 \
  APP_ENV=development SIRIUS_LOG_LEVEL=warn INSTANCE_ID=bench \
  VALKEY_HOST=127.0.0.1 VALKEY_PORT="$rport" RABBITMQ_URL="amqp://guest:guest@127.0.0.1:$aport/" \
  AMQP_COMMAND_QUEUE=bench-cmd AMQP_RESULT_QUEUE=bench-res COMMAND_QUEUE_SIZE=$((n + 10000)) \
  MAX_AGENT_LOAD=1.0 "$build/src/sirius-manager" >"$out/manager.log" 2>&1 &
mpid=$!
for _ in $(seq 200); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$admin/ready")" = 200 ] && break
  sleep 0.1
done
# A long heartbeat interval: heartbeats carry host-wide CPU usage, which this benchmark drives
# to 100 % on a small machine and which would mark every agent fully loaded (see RESULTS.md).
SIRIUS_LOG_LEVEL=warn "$build/src/sirius-agent" --server "127.0.0.1:$gport" --count "$agents" \
  --id-prefix bench- --max-concurrent "$maxc" --heartbeat-interval 3600 \
  >"$out/agents.log" 2>&1 &
apid=$!
total() { curl -fsS "http://127.0.0.1:$admin/api/agents?limit=1" | grep -o '"total":[0-9]*' | tr -dc 0-9; }
for _ in $(seq 600); do [ "$(total)" = "$agents" ] && break; sleep 0.1; done
echo "agents_connected: $(total)"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# CPU ticks of every process of the broker node (its beam and helpers run as one process group
# under the launcher; the beam's pid is in the node's pid file).
broker_ticks() {
  local p t=0
  p=$(cat "$bdir/rabbit.pid" 2>/dev/null || true)
  [ -n "$p" ] && t=$(cpu_ticks "$p")
  echo "$t"
}
# Calls of the store's scripts (EVALSHA/EVAL) and of all commands (including those run inside
# scripts, which redis counts too) so far.
redis_calls() { redis-cli -p "$rport" info commandstats | awk -F'[=,:]' '/^cmdstat_eval/ {e += $3} /^cmdstat_/ && !/cmdstat_(info|ping)/ {s += $3} END {print e + 0, s + 0}'; }
phase() { # name, then the sm-e2e arguments; prints the tool's line plus CPU use and redis calls
  local name=$1 g0 g1 c0 c1 r0 r1 b0 b1 k0 k1 a0 a1 t0 t1 line hz
  shift
  hz=$(getconf CLK_TCK)
  g0=$(cpu_ticks "$apid") c0=$(cpu_ticks "$mpid") r0=$(cpu_ticks "$rpid") b0=$(broker_ticks)
  read -r k0 a0 < <(redis_calls)
  t0=$(date +%s.%N)
  line=$("$tool" "$@" 2>>"$out/sm-e2e.log")
  t1=$(date +%s.%N)
  g1=$(cpu_ticks "$apid") c1=$(cpu_ticks "$mpid") r1=$(cpu_ticks "$rpid") b1=$(broker_ticks)
  read -r k1 a1 < <(redis_calls)
  echo "$name: $line $(awk -v t0="$t0" -v t1="$t1" -v hz="$hz" -v c0="$c0" -v c1="$c1" \
    -v r0="$r0" -v r1="$r1" -v b0="$b0" -v b1="$b1" -v k0="$k0" -v k1="$k1" -v a0="$a0" -v a1="$a1" \
    -v g0="$g0" -v g1="$g1" 'BEGIN {
    d = t1 - t0; printf "cpu_cores manager=%.2f agents=%.2f redis=%.2f broker=%.2f redis_scripts=%d redis_commands=%d",
    (c1-c0)/hz/d, (g1-g0)/hz/d, (r1-r0)/hz/d, (b1-b0)/hz/d, k1 - k0, a1 - a0 }')"
}

echo "submitter_alone: $("$tool" rest --sink --n "$n" --conns "$conns" --prefix sink)"
phase warmup rest --admin-port "$admin" --amqp-port "$aport" --result-queue bench-res \
  --n 5000 --conns "$conns" --prefix warm >/dev/null

perf_pid=''
if [ "${PROFILE:-0}" = 1 ]; then
  # DWARF unwinding: the release build has no frame pointers.
  perf record -F 299 --call-graph dwarf,16384 -p "$mpid" -o "$out/perf.data" >/dev/null 2>&1 &
  perf_pid=$!
fi
phase rest rest --admin-port "$admin" --amqp-port "$aport" --result-queue bench-res \
  --n "$n" --conns "$conns" --prefix rest
if [ -n "$perf_pid" ]; then
  kill -INT "$perf_pid"
  wait "$perf_pid" 2>/dev/null || true
  {
    echo "== self time by symbol"
    perf report -i "$out/perf.data" --no-children --sort symbol --stdio -g none 2>/dev/null |
      grep -v '^#' | grep '%' | head -30
    echo "== inclusive time (children) by symbol"
    perf report -i "$out/perf.data" --children --sort symbol --stdio -g none 2>/dev/null |
      grep -v '^#' | grep '%' | head -60
  } >"$out/perf.txt" || true
  echo "profile: $out/perf.txt"
fi
# AMQP: the N commands are published at full speed (confirms, window 1000) while the manager
# runs and consumes; the rate counts from the first publish to the last result published.
phase amqp amqp --amqp-port "$aport" --command-queue bench-cmd --result-queue bench-res \
  --n "$n" --window 1000 --prefix amqp
grep -c '"level":"error"' "$out/manager.log" | sed 's/^/manager_error_lines: /' || true
