#!/usr/bin/env bash
# Runs a test program against a throwaway rabbitmq-server: starts one broker, exports
# SM_RABBITMQ_PORT, SM_RABBITMQ_DIR and SM_RABBITMQ_SCRIPT (for kill/restart), runs the program
# and always stops the broker, whatever the program's fate.
set -euo pipefail
script=$1
shift
out=$("$script" start)
port=${out%% *}
dir=${out#* }
trap '"$script" stop "$dir" >/dev/null 2>&1 || true' EXIT
export SM_RABBITMQ_PORT=$port SM_RABBITMQ_DIR=$dir SM_RABBITMQ_SCRIPT=$script
"$@"
