#!/usr/bin/env bash
# HTTP/2 abuse of the gRPC port, longer and harder than test/integration/test_h2_abuse.py, against
# a release build: each attack for DURATION seconds (default 10) from ATTACKERS processes
# (default 1), reconnecting whenever the manager ends a connection, while a grpcio Ping and a
# GET /health on the admin port run every 20 ms. Prints one table row per attack: the attack
# rate achieved, the manager's peak RSS (VmHWM, reset before each attack) and CPU, Ping p50/p99
# and /health p99 during the attack (the baseline is printed first), probe failures, and how the
# attacker's connections ended.
#
#   bench/abuse/run.sh                     DURATION=30 ATTACKERS=2 bench/abuse/run.sh
#   ONLY=rapid,hpack bench/abuse/run.sh    (attacks whose name contains one of these)
#   BUILD=build bench/abuse/run.sh         (another build directory; default build-release)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${BUILD:-$ROOT/build-release}
if [ ! -x "$BUILD/src/sirius-manager" ]; then
  [ -d "$BUILD" ] || meson setup "$BUILD" "$ROOT" -Dbuildtype=release >/dev/null
  ninja -C "$BUILD" src/sirius-manager >/dev/null
fi
export SM_BUILD_DIR=$BUILD
exec /usr/bin/python3 "$ROOT/bench/abuse/run.py"
