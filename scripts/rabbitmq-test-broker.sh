#!/usr/bin/env bash
# Starts and stops a throwaway rabbitmq-server on loopback for tests and the local run command.
#
#   scripts/rabbitmq-test-broker.sh start [DIR]   prints the AMQP port on stdout when ready
#   scripts/rabbitmq-test-broker.sh stop DIR      stops that broker and removes DIR
#   scripts/rabbitmq-test-broker.sh kill DIR      SIGKILLs the node (simulated crash), keeps DIR
#   scripts/rabbitmq-test-broker.sh restart DIR   starts the node of DIR again on the same port
#
# DIR defaults to a new temporary folder; `start` prints "<port> <dir>" so callers can stop it.
# Each broker has its own node name (sm-test-<port>@localhost), AMQP and distribution ports,
# data, log and config files and its own HOME (erlang cookie), all owned by the user that runs
# the node: as root, Debian's wrapper would switch to `rabbitmq` with the shared /var/lib HOME, so
# the script runs the real server script itself under runuser with its own environment.
set -euo pipefail

RMQ_BIN=/usr/lib/rabbitmq/bin
READY_TIMEOUT=${RABBITMQ_TEST_READY_TIMEOUT:-60}

die() {
  echo "rabbitmq-test-broker: $*" >&2
  exit 1
}

free_port() {
  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Runs a command as the broker's user with the broker's environment (read from DIR/env).
as_broker() {
  local dir=$1
  shift
  local envs=()
  while IFS= read -r line; do envs+=("$line"); done <"$dir/env"
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u rabbitmq -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "${envs[@]}" "$@"
  else
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "${envs[@]}" "$@"
  fi
}

launch() {
  local dir=$1
  # setsid: the node gets its own process group so `stop` can end every process of it.
  as_broker "$dir" setsid "$RMQ_BIN/rabbitmq-server" >"$dir/log/stdout.log" 2>&1 </dev/null &
  echo $! >"$dir/launcher.pid"
}

wait_ready() {
  local dir=$1 port=$2 node=$3
  local deadline=$((SECONDS + READY_TIMEOUT))
  while [ $SECONDS -lt $deadline ]; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      # The listener opens late in boot; await_startup confirms the node finished booting.
      if as_broker "$dir" "$RMQ_BIN/rabbitmqctl" -q -n "$node" await_startup --timeout 30 \
        >/dev/null 2>&1; then
        return 0
      fi
    fi
    if ! kill -0 "$(cat "$dir/launcher.pid")" 2>/dev/null; then
      tail -n 20 "$dir/log/stdout.log" >&2 || true
      die "rabbitmq-server exited during start (logs in $dir/log)"
    fi
    sleep 0.2
  done
  die "rabbitmq-server not ready after ${READY_TIMEOUT}s (logs in $dir/log)"
}

# The pid of a live epmd (a zombie left by an earlier stop does not count), or nothing.
epmd_pid() {
  ps -C epmd -o pid=,stat= 2>/dev/null | awk '$2 !~ /^Z/ {print $1; exit}'
}

cmd_start() {
  local dir=${1:-}
  [ -x "$RMQ_BIN/rabbitmq-server" ] || die "rabbitmq-server not installed (scripts/setup.sh)"
  if [ -z "$dir" ]; then
    dir=$(mktemp -d /tmp/sm-rabbitmq.XXXXXX)
  fi
  mkdir -p "$dir"/{home,mnesia,log}
  local port dist node
  port=$(free_port)
  dist=$(free_port)
  while [ "$dist" = "$port" ]; do dist=$(free_port); done
  node="sm-test-$port@localhost"
  if [ -n "$(epmd_pid)" ]; then echo 0 >"$dir/epmd-ours"; else echo 1 >"$dir/epmd-ours"; fi
  cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$port
loopback_users.guest = true
log.file.level = warning
log.console = false
vm_memory_high_watermark.relative = 0.8
disk_free_limit.absolute = 50MB
EOF
  echo "[]." >"$dir/enabled_plugins"
  : >"$dir/rabbitmq-env.conf"
  cat >"$dir/env" <<EOF
HOME=$dir/home
RABBITMQ_NODENAME=$node
RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
RABBITMQ_NODE_PORT=$port
RABBITMQ_DIST_PORT=$dist
RABBITMQ_MNESIA_BASE=$dir/mnesia
RABBITMQ_LOG_BASE=$dir/log
RABBITMQ_CONFIG_FILE=$dir/rabbitmq.conf
RABBITMQ_ADVANCED_CONFIG_FILE=$dir/advanced.config
RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins
RABBITMQ_CONF_ENV_FILE=$dir/rabbitmq-env.conf
RABBITMQ_PID_FILE=$dir/rabbit.pid
ERL_EPMD_ADDRESS=127.0.0.1
EOF
  echo "$port" >"$dir/port"
  echo "$node" >"$dir/node"
  if [ "$(id -u)" -eq 0 ]; then
    chown -R rabbitmq:rabbitmq "$dir"
  fi
  launch "$dir"
  wait_ready "$dir" "$port" "$node"
  if [ "$(cat "$dir/epmd-ours")" = 1 ]; then
    # The node started epmd: remember its pid so `stop` ends exactly that process.
    epmd_pid >"$dir/epmd.pid" || true
  fi
  echo "$port $dir"
}

cmd_restart() {
  local dir=${1:?usage: restart DIR}
  [ -f "$dir/env" ] || die "$dir is not a broker folder"
  launch "$dir"
  wait_ready "$dir" "$(cat "$dir/port")" "$(cat "$dir/node")"
  echo "$(cat "$dir/port") $dir"
}

# Kills every process of the node: the launcher's process group plus the beam process, whose
# pid the server writes to its pid file.
kill_node() {
  local dir=$1 sig=$2
  local pid
  if [ -f "$dir/rabbit.pid" ]; then
    pid=$(cat "$dir/rabbit.pid" 2>/dev/null || true)
    [ -n "$pid" ] && kill "-$sig" "$pid" 2>/dev/null || true
  fi
  if [ -f "$dir/launcher.pid" ]; then
    pid=$(cat "$dir/launcher.pid")
    kill "-$sig" -- "-$pid" 2>/dev/null || kill "-$sig" "$pid" 2>/dev/null || true
  fi
  # erl_child_setup and inet_gethost belong to the same group; give them a moment to go.
  local i
  for i in $(seq 1 50); do
    [ -f "$dir/launcher.pid" ] && kill -0 "$(cat "$dir/launcher.pid")" 2>/dev/null || break
    sleep 0.1
  done
  rm -f "$dir/rabbit.pid"
}

cmd_kill() {
  local dir=${1:?usage: kill DIR}
  kill_node "$dir" KILL
}

cmd_stop() {
  local dir=${1:?usage: stop DIR}
  [ -f "$dir/env" ] || die "$dir is not a broker folder"
  as_broker "$dir" timeout 20 "$RMQ_BIN/rabbitmqctl" -q -n "$(cat "$dir/node")" stop \
    >/dev/null 2>&1 || true
  kill_node "$dir" KILL
  if [ -s "$dir/epmd.pid" ]; then
    # This broker started epmd; stop it unless another node registered with it since.
    if ! epmd -names 2>/dev/null | grep -q '^name '; then
      kill "$(head -n 1 "$dir/epmd.pid")" 2>/dev/null || true
    fi
  fi
  case "$dir" in
  /tmp/sm-rabbitmq.*) rm -rf "$dir" ;;
  *) ;;
  esac
}

case "${1:-}" in
start) cmd_start "${2:-}" ;;
stop) cmd_stop "${2:-}" ;;
kill) cmd_kill "${2:-}" ;;
restart) cmd_restart "${2:-}" ;;
*)
  echo "usage: $0 start [DIR] | stop DIR | kill DIR | restart DIR" >&2
  exit 2
  ;;
esac
