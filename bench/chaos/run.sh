#!/usr/bin/env bash
# Chaos scenarios, long form (issue 12): each scenario is one sirius-loadtest run of SECS seconds
# at RATE commands/s with AGENTS in-process agents against a fresh sirius-manager on a real
# redis-server and rabbitmq-server, with one fault from FAULT_AT for FAULT_S seconds:
#   agents-blackhole, agents-reset, agents-drop, agents-delay, agents-bandwidth
#       the harness's proxy between its agents and the manager (--server proxy:agents);
#   redis-blackhole, redis-restart     the manager reaches redis through the harness's proxy;
#                                      restart: kill -9 redis-server, started again FAULT_S later;
#   rabbitmq-blackhole, rabbitmq-restart   the same for rabbitmq (commands submitted over AMQP);
#   manager-kill9, manager-sigterm     the manager killed (-9 / graceful), restarted by
#                                      restart_cmd FAULT_S later;
#   cpu-pressure, memory-pressure      a hog (nproc busy threads / HOG_MB MiB) for FAULT_S.
# Each run must pass the no-loss check. Prints one line per scenario (the per-fault figures);
# the JSON and HTML reports stay in $OUT. Stops by itself (about SCENARIOS x (SECS + 15) s).
#
# Usage: bench/chaos/run.sh [builddir=build-release]
#   env: SECS (60), RATE (200), AGENTS (50), FAULT_AT (20), FAULT_S (15), HOG_MB (1024),
#        SCENARIOS (all of the above, space separated), OUT (default /tmp/sm-chaos.XXXXXX, kept)
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build-release}
secs=${SECS:-60}
rate=${RATE:-200}
agents=${AGENTS:-50}
fault_at=${FAULT_AT:-20}
fault_s=${FAULT_S:-15}
hog_mb=${HOG_MB:-1024}
scenarios=${SCENARIOS:-"agents-blackhole agents-reset agents-drop agents-delay agents-bandwidth
  redis-blackhole redis-restart rabbitmq-blackhole rabbitmq-restart manager-kill9
  manager-sigterm cpu-pressure memory-pressure"}
for b in sirius-manager sirius-loadtest; do
  [ -x "$build/src/$b" ] || { echo "run.sh: $build/src/$b missing (ninja -C $build)" >&2; exit 1; }
done
out=${OUT:-$(mktemp -d /tmp/sm-chaos.XXXXXX)}
mkdir -p "$out"
root=$PWD
py=/usr/bin/python3
free_port() { $py -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

bdir='' ltpid=''
stop_pid() { [ -n "${1:-}" ] && kill "$1" 2>/dev/null && wait "$1" 2>/dev/null || true; }
redis_pid() { cat "$out/redis.pid" 2>/dev/null || true; }
manager_pid() { cat "$out/manager.pid" 2>/dev/null || true; }
stop_manager() {
  local p
  p=$(manager_pid)
  [ -n "$p" ] || return 0
  kill "$p" 2>/dev/null || true
  for _ in $(seq 200); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$p" 2>/dev/null || true
  rm -f "$out/manager.pid"
}
cleanup() {
  stop_pid "$ltpid"
  stop_manager
  local p
  p=$(redis_pid)
  [ -n "$p" ] && kill "$p" 2>/dev/null || true
  [ -n "$bdir" ] && scripts/rabbitmq-test-broker.sh stop "$bdir" >/dev/null 2>&1 || true
}
trap cleanup EXIT

echo "machine: nproc=$(nproc) date=$(date -u +%Y-%m-%dT%H:%MZ) build=$build out=$out secs=$secs rate=$rate agents=$agents fault_at=$fault_at fault_s=$fault_s"

# ---- servers: redis (restartable by a script that records its pid) and rabbitmq ----
rport=$(free_port)
cat >"$out/redis.sh" <<EOF
echo \$\$ > "$out/redis.pid"
exec redis-server --port $rport --bind 127.0.0.1 --dir "$out" --appendonly yes \
  --appendfsync always --save "" --daemonize no --logfile "$out/redis.log" --protected-mode no
EOF
sh "$out/redis.sh" >/dev/null 2>&1 &
for _ in $(seq 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
read -r aport bdir < <(scripts/rabbitmq-test-broker.sh start)

gport=$(free_port)
admin=$(free_port)
# The manager as a script, so restart_cmd can start it again the same way; VPORT / APORT are
# the redis / rabbitmq ports it uses (a proxy's in the store and broker scenarios).
write_manager_sh() {
  cat >"$out/manager.sh" <<EOF
echo \$\$ > "$out/manager.pid"
exec env GRPC_SERVER_ADDR=127.0.0.1:$gport ADMIN_API_ADDR=127.0.0.1:$admin METRICS_ADDR=127.0.0.1:0 \
  APP_ENV=development SIRIUS_LOG_LEVEL=warn INSTANCE_ID=chaos \
  VALKEY_HOST=127.0.0.1 VALKEY_PORT=$1 RABBITMQ_URL=amqp://guest:guest@127.0.0.1:$2/ \
  AMQP_COMMAND_QUEUE=chaos-cmd AMQP_RESULT_QUEUE=chaos-res \
  ADMIN_RATE_LIMIT_RPS=0 ADMIN_RATE_LIMIT_IP_RPS=0 \
  "$root/$build/src/sirius-manager" >>"$out/manager.log" 2>&1
EOF
}

# scenario NAME SUBMIT SERVER [loadtest flags...]: the manager starts after the harness (whose
# proxies it may need), the harness waits for it (--connect-timeout).
scenario() {
  local name=$1 submit=$2 server=$3
  shift 3
  redis-cli -p "$rport" flushall >/dev/null 2>&1 || true
  "$build/src/sirius-loadtest" --agents "$agents" --commands 0 --commands-per-agent 0 \
    --duration "$secs" --rate "$rate" --types echo:80,scan:20 --scan-duration-ms 20 \
    --heartbeat-interval 1 --command-timeout 30 --drain-timeout 60 --connect-timeout 30 \
    --report-interval 0 --submit "$submit" --server "$server" \
    --manager-api "http://127.0.0.1:$admin" --amqp-url "amqp://guest:guest@127.0.0.1:$aport/" \
    --command-queue chaos-cmd --result-queue chaos-res \
    --format json --output "$out/$name.json" "$@" 2>>"$out/$name.err" &
  ltpid=$!
  sleep 0.3
  sh "$out/manager.sh" &
  local rc=0
  wait "$ltpid" || rc=$?
  ltpid=''
  stop_manager
  # one line per fault from the JSON report
  $py - "$out/$name.json" "$name" "$rc" <<'EOF'
import json, sys
path, name, rc = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    d = json.load(open(path))
except Exception as e:  # noqa: BLE001
    print(f"{name:20s} rc={rc} no report ({e})")
    sys.exit(0)
nl = d["no_loss"]
for f in d["faults"] or [{}]:
    def v(k, fmt="{:.2f}"):
        x = f.get(k)
        return "-" if x is None else fmt.format(x)
    print(f"{name:20s} rc={rc} no_loss={'pass' if nl['pass'] else 'FAIL'} "
          f"accepted={nl['accepted']} not_final={nl['not_final']} twice={nl['final_twice']} "
          f"detect_s={v('time_to_detect_s')} recover_s={v('time_to_recover_s')} "
          f"submitted={v('submitted','{}')} completed={v('completed','{}')} "
          f"failed={v('failed','{}')} retried={v('retried','{}')} "
          f"max_latency_ms={v('max_latency_ms','{:.0f}')} p99_ms={d['latency_ms']['p99']:.1f} "
          f"throughput={d['throughput']:.1f} error={f.get('error')}")
EOF
}

win="at=$fault_at duration=$fault_s"
for s in $scenarios; do
  px=$(free_port)
  agents_proxy="--proxy agents=127.0.0.1:$px->127.0.0.1:$gport"
  redis_proxy="--proxy redis=127.0.0.1:$px->127.0.0.1:$rport"
  amqp_proxy="--proxy rabbitmq=127.0.0.1:$px->127.0.0.1:$aport"
  write_manager_sh "$rport" "$aport"
  case $s in
  agents-blackhole | agents-reset | agents-drop)
    # shellcheck disable=SC2086
    scenario "$s" rest proxy:agents $agents_proxy --fault "$win target=agents action=${s#agents-}" ;;
  agents-delay)
    # shellcheck disable=SC2086
    scenario "$s" rest proxy:agents $agents_proxy --fault "$win target=agents action=delay delay_ms=200" ;;
  agents-bandwidth)
    # shellcheck disable=SC2086
    scenario "$s" rest proxy:agents $agents_proxy \
      --fault "$win target=agents action=bandwidth bytes_per_s=20000" ;;
  redis-blackhole)
    write_manager_sh "$px" "$aport"
    # shellcheck disable=SC2086
    scenario "$s" rest "127.0.0.1:$gport" $redis_proxy --fault "$win target=redis action=blackhole" ;;
  redis-restart)
    write_manager_sh "$px" "$aport"
    # shellcheck disable=SC2086
    scenario "$s" rest "127.0.0.1:$gport" $redis_proxy \
      --fault "$win target=redis action=kill9 pid_file=$out/redis.pid restart_cmd='sh $out/redis.sh'" ;;
  rabbitmq-blackhole)
    write_manager_sh "$rport" "$px"
    # shellcheck disable=SC2086
    scenario "$s" amqp "127.0.0.1:$gport" $amqp_proxy --fault "$win target=rabbitmq action=blackhole" ;;
  rabbitmq-restart)
    write_manager_sh "$rport" "$px"
    # shellcheck disable=SC2086
    scenario "$s" amqp "127.0.0.1:$gport" $amqp_proxy \
      --fault "$win target=rabbitmq action=kill9 cmd='$root/scripts/rabbitmq-test-broker.sh kill $bdir' restart_cmd='$root/scripts/rabbitmq-test-broker.sh restart $bdir'" ;;
  manager-kill9 | manager-sigterm)
    scenario "$s" rest "127.0.0.1:$gport" \
      --fault "$win target=manager action=${s#manager-} pid_file=$out/manager.pid restart_cmd='sh $out/manager.sh'" ;;
  cpu-pressure)
    scenario "$s" rest "127.0.0.1:$gport" \
      --fault "$win target=manager action=cpu_pressure threads=$(nproc)" ;;
  memory-pressure)
    scenario "$s" rest "127.0.0.1:$gport" \
      --fault "$win target=manager action=memory_pressure mb=$hog_mb" ;;
  *) echo "run.sh: unknown scenario $s" >&2 ;;
  esac
done
