#!/usr/bin/env bash
# End-to-end command throughput (issue 3): commands/s through REST (arrays of 1000) and through
# AMQP, accepted -> stored -> dispatched -> result stored -> published, with 1,000 simulated agents
# (one `sirius-agent --count 1000`, echo commands) and a real redis-server and rabbitmq-server on
# loopback; p50/p99 of completed_at - created_at from the published results; every id checked.
# Baselines in the same run: the broker alone (sm-e2e raw: publish with confirms + consume, same
# message size) and redis-server alone (redis-benchmark SET/GET and an EVAL shaped like the
# store's create script, pipelined). Prints key=value lines; stops by itself.
# Phases (PHASES, default "rest amqp valkey_only", in that order whatever the order given):
#   rest         REST arrays of 1000, results from the AMQP result queue (manager #1); then
#                rest_half_rate: the same at half the rate just measured (arrays of 50 on a
#                schedule), for the latency at that load
#   amqp         commands published to the command queue, results from the result queue (#1)
#   valkey_only  a second manager without RABBITMQ_URL (manager #1, its agents and the broker
#                stopped first, redis flushed), a new agent fleet, REST arrays of 1000, results
#                read over REST (sm-e2e rest --poll: GET /api/commands every 200 ms)
# Each phase line adds the manager's CPU time per command (manager_us_per_cmd, from /proc) and
# the redis script calls and commands per command (for valkey_only without the poller's own
# listing calls; its manager CPU does include serving the listing, poll_records= records, about
# one per command when the pipeline keeps up); the ratio lines at the end relate the phases to
# the baselines of this run.
#
# Usage: bench/e2e/run.sh [N=100000] [builddir=build-bench]
#   env: PHASES (above), CONNS (REST submitters, 4), AGENTS (1000), MAX_CONCURRENT (4 per agent),
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
phases=${PHASES:-rest amqp valkey_only}
for p in $phases; do
  case $p in
    rest | amqp | valkey_only) ;;
    *) echo "run.sh: unknown phase '$p' in PHASES (rest amqp valkey_only)" >&2; exit 1 ;;
  esac
done
has() { case " $phases " in *" $1 "*) return 0 ;; esac; return 1; }
with_broker=0
if has rest || has amqp; then with_broker=1; fi
out=${OUT:-$(mktemp -d /tmp/sm-e2e.XXXXXX)}
mkdir -p "$out"
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

rpid='' mpid='' apid='' bdir='' toolpid='' perf_pid=''
# TERM, then KILL after 10 s: a process that hangs on the way out must not keep the run alive.
stop_pid() {
  local p=$1 st
  [ -n "$p" ] || return 0
  kill "$p" 2>/dev/null || { wait "$p" 2>/dev/null || true; return 0; }
  for _ in $(seq 100); do
    st=$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null || true)
    [ -z "$st" ] || [ "$st" = Z ] && break
    sleep 0.1
  done
  kill -9 "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}
stop_broker() {
  [ -n "$bdir" ] && scripts/rabbitmq-test-broker.sh stop "$bdir" >/dev/null 2>&1 || true
  bdir=''
}
cleanup() {
  # The load generator and the profiler, the agents, then the manager (so it does not see its
  # store go away), then the servers.
  stop_pid "$toolpid"
  stop_pid "$perf_pid"
  stop_pid "$apid"
  stop_pid "$mpid"
  stop_pid "$rpid"
  stop_broker
  if [ -z "${OUT:-}" ] && [ "${PROFILE:-0}" != 1 ] && [ "${KEEP:-0}" != 1 ]; then rm -rf "$out"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "machine: nproc=$(nproc) cpu=\"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')\" date=$(date -u +%Y-%m-%dT%H:%MZ) n=$n agents=$agents max_concurrent=$maxc conns=$conns phases=\"$phases\""

# Runs sm-e2e in the background, in this shell (so that cleanup can stop it), its line into
# $out/tool.out; exits when it fails.
run_tool() {
  "$tool" "$@" >"$out/tool.out" 2>>"$out/sm-e2e.log" &
  toolpid=$!
  local rc=0
  wait "$toolpid" || rc=$?
  toolpid=''
  if [ "$rc" != 0 ]; then
    echo "run.sh: sm-e2e $1 failed with $rc (see $out/sm-e2e.log)" >&2
    tail -5 "$out/sm-e2e.log" >&2
    exit 1
  fi
}
# The value of key in a line of key=value pairs ('' when absent).
field() { grep -o "\(^\| \)$1=[^ ]*" <<<"$2" | head -1 | cut -d= -f2 || true; }

# ---- servers ----
rport=$(free_port)
# Append-only file fsynced every second (the usual production setting), no RDB snapshots.
redis-server --port "$rport" --bind 127.0.0.1 --dir "$out" --appendonly yes \
  --appendfsync everysec --save "" --daemonize no --logfile "$out/redis.log" \
  --protected-mode no >/dev/null 2>&1 &
rpid=$!
aport=''
if [ "$with_broker" = 1 ]; then
  read -r aport bdir < <(scripts/rabbitmq-test-broker.sh start)
  [ -n "$bdir" ] || { echo "run.sh: the broker did not start" >&2; exit 1; }
fi
for _ in $(seq 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done

# ---- baselines ----
# redis alone: 50 clients, pipelines of 16 (the store pipelines its requests on one connection).
rb() { redis-benchmark -p "$rport" -q -c 50 -P 16 "$@" 2>/dev/null | tr '\r' '\n' | grep -o '[^ ]*: [0-9.]* requests per second' | tail -1; }
echo "redis_set: $(rb -n 1000000 -r 1000000 -t set | awk '{print $2}') ops/s"
echo "redis_get: $(rb -n 1000000 -r 1000000 -t get | awk '{print $2}') ops/s"
# One EVAL doing what the store's create script does (HSET of 4 fields, 4 ZADDs).
lua="local k='b:cmd:'..ARGV[1] redis.call('HSET',k,'s','queued','a','','m',ARGV[1],'j',ARGV[2]) redis.call('ZADD','b:all',0,ARGV[1]) redis.call('ZADD','b:st:queued',0,ARGV[1]) redis.call('ZADD','b:active',0,ARGV[1]) redis.call('ZADD','b:type:echo',0,ARGV[1]) return 1"
eval_rate=$(rb -n 300000 -r 1000000 eval "$lua" 0 __rand_int__ '{"id":"x","type":"echo","params":{"n":"1"},"status":"queued"}' | awk '{print $2}')
echo "redis_eval_create: $eval_rate ops/s"
redis-cli -p "$rport" flushall >/dev/null
broker_rate=''
if [ "$with_broker" = 1 ]; then
  run_tool raw --amqp-port "$aport" --queue bench-raw --n "$n" --size 100 --window 1000
  line=$(cat "$out/tool.out")
  echo "broker_raw: $line"
  broker_rate=$(field publish_consume_per_s "$line")
fi

# ---- manager and agents ----
gport='' admin=''
# start_fleet LOG [RABBITMQ_URL]: a manager (with the broker when a URL is given) on new ports
# and AGENTS agents connected to it.
start_fleet() {
  local log=$1 url=${2:-} mq=()
  [ -n "$url" ] && mq=(RABBITMQ_URL="$url" AMQP_COMMAND_QUEUE=bench-cmd AMQP_RESULT_QUEUE=bench-res)
  gport=$(free_port)
  admin=$(free_port)
  env GRPC_SERVER_ADDR=127.0.0.1:$gport ADMIN_API_ADDR=127.0.0.1:$admin METRICS_ADDR=127.0.0.1:0 \
    APP_ENV=development SIRIUS_LOG_LEVEL=warn INSTANCE_ID=bench \
    VALKEY_HOST=127.0.0.1 VALKEY_PORT="$rport" ${mq[@]+"${mq[@]}"} COMMAND_QUEUE_SIZE=$((n + 10000)) \
    MAX_AGENT_LOAD=1.0 "$build/src/sirius-manager" >"$out/$log" 2>&1 &
  mpid=$!
  local ready=0
  for _ in $(seq 200); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$admin/ready")" = 200 ] && { ready=1; break; }
    kill -0 "$mpid" 2>/dev/null || break
    sleep 0.1
  done
  [ "$ready" = 1 ] || { echo "run.sh: the manager did not get ready (see $out/$log)" >&2; tail -5 "$out/$log" >&2; exit 1; }
  # A long heartbeat interval: heartbeats carry host-wide CPU usage, which this benchmark drives
  # to 100 % on a small machine and which would mark every agent fully loaded (see RESULTS.md).
  SIRIUS_LOG_LEVEL=warn "$build/src/sirius-agent" --server "127.0.0.1:$gport" --count "$agents" \
    --id-prefix bench- --max-concurrent "$maxc" --heartbeat-interval 3600 \
    >>"$out/agents.log" 2>&1 &
  apid=$!
  for _ in $(seq 600); do [ "$(total)" = "$agents" ] && break; sleep 0.1; done
  echo "agents_connected: $(total)"
}
stop_fleet() {
  stop_pid "$apid"
  apid=''
  stop_pid "$mpid"
  mpid=''
}
total() { curl -fsS "http://127.0.0.1:$admin/api/agents?limit=1" | grep -o '"total":[0-9]*' | tr -dc 0-9 || true; }

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# CPU ticks of every process of the broker node (its beam and helpers run as one process group
# under the launcher; the beam's pid is in the node's pid file).
broker_ticks() {
  local p t=0
  [ -n "$bdir" ] && p=$(cat "$bdir/rabbit.pid" 2>/dev/null || true)
  [ -n "${p:-}" ] && t=$(cpu_ticks "$p")
  echo "$t"
}
# Calls of the store's scripts (EVALSHA/EVAL) and of all commands (including those run inside
# scripts, which redis counts too) so far.
redis_calls() { redis-cli -p "$rport" info commandstats | awk -F'[=,:]' '/^cmdstat_eval/ {e += $3} /^cmdstat_/ && !/cmdstat_(info|ping)/ {s += $3} END {print e + 0, s + 0}'; }
last_line=''
phase() { # name, then the sm-e2e arguments; prints the tool's line plus CPU use and redis calls
  local name=$1 g0 g1 c0 c1 r0 r1 b0 b1 k0 k1 a0 a1 t0 t1 line hz cmds pp pr
  shift
  hz=$(getconf CLK_TCK)
  # --n of the arguments: the commands of the phase, the divisor of the per-command figures
  cmds=$(sed -n 's/.*--n \([0-9]*\).*/\1/p' <<<"$*")
  g0=$(cpu_ticks "$apid") c0=$(cpu_ticks "$mpid") r0=$(cpu_ticks "$rpid") b0=$(broker_ticks)
  read -r k0 a0 < <(redis_calls)
  t0=$(date +%s.%N)
  run_tool "$@"
  line=$(cat "$out/tool.out")
  t1=$(date +%s.%N)
  g1=$(cpu_ticks "$apid") c1=$(cpu_ticks "$mpid") r1=$(cpu_ticks "$rpid") b1=$(broker_ticks)
  read -r k1 a1 < <(redis_calls)
  # The REST poller's own listing (valkey_only): one script call per page, running ZRANGEBYLEX
  # and one HMGET per listed record; not the manager's work, so not in the per-command figures.
  pp=$(field poll_pages "$line") pr=$(field poll_records "$line")
  last_line="$name: $line $(awk -v t0="$t0" -v t1="$t1" -v hz="$hz" -v c0="$c0" -v c1="$c1" \
    -v r0="$r0" -v r1="$r1" -v b0="$b0" -v b1="$b1" -v k0="$k0" -v k1="$k1" -v a0="$a0" -v a1="$a1" \
    -v g0="$g0" -v g1="$g1" -v n="$cmds" -v pp="${pp:-0}" -v pr="${pr:-0}" 'BEGIN {
    d = t1 - t0; printf "cpu_cores manager=%.2f agents=%.2f redis=%.2f broker=%.2f redis_scripts=%d redis_commands=%d",
    (c1-c0)/hz/d, (g1-g0)/hz/d, (r1-r0)/hz/d, (b1-b0)/hz/d, k1 - k0, a1 - a0
    printf " manager_us_per_cmd=%.1f redis_calls_per_cmd=%.3f redis_commands_per_cmd=%.2f",
    (c1-c0)/hz*1e6/n, (k1-k0-pp)/n, (a1-a0-2*pp-pr)/n }')"
  echo "$last_line"
}
# a / b, both from this run ("n/a" when one is missing).
ratio() { awk -v a="${1:-}" -v b="${2:-}" 'BEGIN { if (a == "" || b + 0 <= 0) print "n/a"; else printf "%.3f\n", a / b }'; }

run_tool rest --sink --n "$n" --conns "$conns" --prefix sink
echo "submitter_alone: $(cat "$out/tool.out")"
rest_rate='' amqp_rate='' valkey_rate='' valkey_done_rate=''
if [ "$with_broker" = 1 ]; then
  start_fleet manager.log "amqp://guest:guest@127.0.0.1:$aport/"
  phase warmup rest --admin-port "$admin" --amqp-port "$aport" --result-queue bench-res \
    --n 5000 --conns "$conns" --prefix warm >/dev/null
fi
if has rest; then
  if [ "${PROFILE:-0}" = 1 ]; then
    # DWARF unwinding: the release build has no frame pointers.
    perf record -F 299 --call-graph dwarf,16384 -p "$mpid" -o "$out/perf.data" >/dev/null 2>&1 &
    perf_pid=$!
  fi
  phase rest rest --admin-port "$admin" --amqp-port "$aport" --result-queue bench-res \
    --n "$n" --conns "$conns" --prefix rest
  rest_rate=$(field e2e_per_s "$last_line")
  if [ -n "$perf_pid" ]; then
    kill -INT "$perf_pid"
    wait "$perf_pid" 2>/dev/null || true
    perf_pid=''
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
  # Latency at half that rate: arrays of 50 on a schedule (sm-e2e --rate), about 10 s of load
  # or N/2 commands, whichever is fewer; p50/p99 are submit-to-result at that load.
  half_rate=$(awk -v r="$rest_rate" 'BEGIN {printf "%.0f", r / 2}')
  if [ "${half_rate:-0}" -gt 0 ]; then
    half_n=$(awk -v r="$half_rate" -v n="$n" 'BEGIN {m = r * 10; if (m > n / 2) m = n / 2; printf "%d", m < 1000 ? 1000 : m}')
    phase rest_half_rate rest --admin-port "$admin" --amqp-port "$aport" --result-queue bench-res \
      --n "$half_n" --conns "$conns" --batch 50 --rate "$half_rate" --prefix half
  fi
fi
if has amqp; then
  # AMQP: the N commands are published at full speed (confirms, window 1000) while the manager
  # runs and consumes; the rate counts from the first publish to the last result published.
  phase amqp amqp --amqp-port "$aport" --command-queue bench-cmd --result-queue bench-res \
    --n "$n" --window 1000 --prefix amqp
  amqp_rate=$(field e2e_per_s "$last_line")
fi
if [ "$with_broker" = 1 ]; then
  echo "manager_error_lines: $(grep -c '"level":"error"' "$out/manager.log" || true)"
  stop_fleet
fi
if has valkey_only; then
  # Nothing of the broker phases may remain: their manager and agents are stopped, the broker
  # too (an idle Erlang node still takes CPU), and redis is emptied so that the listing holds
  # only this manager's commands.
  stop_broker
  redis-cli -p "$rport" flushall >/dev/null
  start_fleet manager-valkey.log
  phase warmup rest --poll --admin-port "$admin" --n 5000 --conns "$conns" --prefix warm >/dev/null
  # The listing begins after the warmup's commands (at its last page).
  from=$(field poll_watermark "$last_line")
  [ "$from" = - ] && from=''
  phase valkey_only rest --poll --admin-port "$admin" --n "$n" --conns "$conns" --prefix vk \
    ${from:+--poll-from "$from"}
  valkey_rate=$(field e2e_per_s "$last_line")
  valkey_done_rate=$(field completed_per_s "$last_line")
  echo "manager_error_lines_valkey_only: $(grep -c '"level":"error"' "$out/manager-valkey.log" || true)"
  stop_fleet
fi

# ---- ratios to the baselines of this run ----
if has rest; then
  echo "ratio rest_vs_broker_raw=$(ratio "$rest_rate" "$broker_rate") rest_e2e_per_s=$rest_rate broker_publish_consume_per_s=$broker_rate"
fi
if has amqp; then
  half=$(awk -v b="${broker_rate:-0}" 'BEGIN { printf "%.0f\n", b / 2 }')
  echo "ratio amqp_vs_half_broker_raw=$(ratio "$amqp_rate" "$half") amqp_e2e_per_s=$amqp_rate half_broker_publish_consume_per_s=$half"
fi
if has valkey_only; then
  echo "ratio valkey_only_vs_redis_eval_create=$(ratio "$valkey_rate" "$eval_rate") valkey_only_e2e_per_s=$valkey_rate valkey_only_completed_per_s=$valkey_done_rate redis_eval_create_per_s=$eval_rate"
fi
