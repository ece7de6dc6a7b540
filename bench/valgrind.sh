#!/usr/bin/env bash
# valgrind memcheck of sirius-manager (debug build) over a short scenario: 5 simulated agents
# (sirius-agent --count 5), REST commands (echo, status, sleep), a cancel, then SIGTERM.
# Prints valgrind's error and leak summary; exits non-zero when memcheck found errors or
# definite/indirect leaks (--error-exitcode), or when the scenario itself failed.
#
#   bench/valgrind.sh            (builds build-debug/ if needed)
#   BUILD=build-debug KEEP=1 bench/valgrind.sh   (KEEP: leave the logs in the work directory)
# Needs valgrind (Debian: apt-get install valgrind; scripts/setup.sh installs it) and curl.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$ROOT/build-debug}
command -v valgrind >/dev/null || { echo "valgrind missing: apt-get install valgrind" >&2; exit 2; }
if [ ! -x "$BUILD/src/sirius-manager" ]; then
  [ -d "$BUILD" ] || meson setup "$BUILD" "$ROOT" -Dbuildtype=debug >/dev/null
  ninja -C "$BUILD" src/sirius-manager src/sirius-agent >/dev/null
fi
WORK=$(mktemp -d /tmp/sm-valgrind.XXXXXX)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
GP=$(port); AP=$(port); MP=$(port)
while [ "$AP" = "$GP" ]; do AP=$(port); done
while [ "$MP" = "$GP" ] || [ "$MP" = "$AP" ]; do MP=$(port); done
API=http://127.0.0.1:$AP
MPID=; APID=
cleanup() {
  [ -n "$APID" ] && kill "$APID" 2>/dev/null || true
  [ -n "$MPID" ] && kill -9 "$MPID" 2>/dev/null || true
  [ -n "${KEEP:-}" ] && echo "logs kept in $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT

echo "valgrind memcheck: $BUILD/src/sirius-manager (grpc :$GP, admin :$AP)"
GRPC_SERVER_ADDR=127.0.0.1:$GP ADMIN_API_ADDR=127.0.0.1:$AP METRICS_ADDR=127.0.0.1:$MP \
APP_ENV=development SIRIUS_LOG_LEVEL=info \
  valgrind --tool=memcheck --error-exitcode=99 --leak-check=full \
    --show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect \
    --track-origins=yes --log-file="$WORK/valgrind.log" \
    "$BUILD/src/sirius-manager" >"$WORK/manager.log" 2>&1 &
MPID=$!
for _ in $(seq 1 300); do
  curl -fs "$API/health" >/dev/null 2>&1 && break
  kill -0 "$MPID" 2>/dev/null || { echo "manager exited early"; cat "$WORK/manager.log"; exit 1; }
  sleep 0.2
done
curl -fs "$API/health" >/dev/null || { echo "manager not healthy"; exit 1; }

"$BUILD/src/sirius-agent" --server 127.0.0.1:$GP --count 5 --id-prefix vg- >"$WORK/agent.log" 2>&1 &
APID=$!
for _ in $(seq 1 150); do
  n=$(curl -fs "$API/api/agents" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])' 2>/dev/null || echo 0)
  [ "$n" = 5 ] && break
  sleep 0.2
done
echo "agents registered: $n"
[ "$n" = 5 ] || { echo "agents did not register"; exit 1; }

post() { curl -fs -X POST -H 'Content-Type: application/json' -d "$1" "$API/api/commands"; }
ids=()
for i in 1 2 3 4 5 6; do
  ids+=("$(post "{\"type\":\"echo\",\"params\":{\"msg\":\"hello $i\"}}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')")
done
post '{"type":"status","agent_id":"vg-1"}' >/dev/null
post '[{"type":"echo","params":{"n":"1"}},{"type":"echo","params":{"n":"2"}}]' >/dev/null
sleep_id=$(post '{"type":"sleep","agent_id":"vg-2","params":{"seconds":"30"}}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
post '{"type":"echo","broadcast":true}' >/dev/null
sleep 2
curl -fs -X PUT "$API/api/commands/$sleep_id/cancel" >/dev/null || echo "(cancel refused: the command may have ended)"
curl -fs "$API/api/commands?limit=100" >/dev/null
curl -fs "$API/api/status" >/dev/null
curl -fs "$API/api/metrics" >/dev/null
curl -fs "http://127.0.0.1:$MP/metrics" >/dev/null || true
curl -s "$API/api/agents/nope" >/dev/null
sleep 2
final=$(curl -fs "$API/api/commands?limit=100" | python3 -c '
import json, sys, collections
print(dict(collections.Counter(c["status"] for c in json.load(sys.stdin)["commands"])))')
echo "commands by status: $final"

kill "$APID" 2>/dev/null; wait "$APID" 2>/dev/null || true; APID=
kill -TERM "$MPID"
set +e
wait "$MPID"; rc=$?
set -e
MPID=
echo "manager exit status under valgrind: $rc (99: memcheck errors)"
echo "---- valgrind summary ----"
grep -E "ERROR SUMMARY|definitely lost|indirectly lost|possibly lost|still reachable|All heap blocks were freed|in use at exit" "$WORK/valgrind.log" | sed 's/^==[0-9]*== //'
if [ "$rc" != 0 ]; then
  echo "---- valgrind errors ----"
  grep -vE "^==[0-9]+== *$" "$WORK/valgrind.log" | sed 's/^==[0-9]*== //' | head -80
  exit 1
fi
