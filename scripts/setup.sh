#!/usr/bin/env bash
# Installs every Debian package the build, the tests and the run need. Idempotent: a package
# already present is not fetched again, and apt-get update runs only when something is missing.
set -euo pipefail

packages=(
  # build
  build-essential meson ninja-build pkg-config
  libuv1-dev libnghttp2-dev libprotobuf-c-dev protobuf-c-compiler
  librabbitmq-dev libhiredis-dev libcjson-dev libssl-dev node-llhttp
  # tests and run
  redis-server rabbitmq-server python3 python3-grpcio python3-grpc-tools python3-protobuf python3-pytest
  python3-pika python3-h2
  nghttp2-client curl openssl prometheus wrk procps iproute2 clang-format git bc util-linux
  # fuzzing (scripts/fuzz.sh): libFuzzer with ASan+UBSan
  clang-14 libfuzzer-14-dev
  # bench/grpcpp (the gRPC C++ reference server; ~8 MB, ~11 s to install)
  libgrpc++-dev libprotobuf-dev protobuf-compiler-grpc
  # bench/valgrind.sh
  valgrind
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "setup: all ${#packages[@]} packages present"
  exit 0
fi

echo "setup: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# Debian's rabbitmq-server and redis-server start system services when installed; the project
# starts its own instances on free ports, so the policy-rc.d guard keeps apt from starting them.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "setup: done"
