#!/usr/bin/env bash
# Soak of the reward service (issue 16): the service (`rrlhf serve reward`, release build) pinned
# to core 0, and 32 closed-loop streaming clients (`rrlhf-soak`) in a separate process pinned to
# core 1, for 160 s; latency percentiles, errors by code, and the server's resident memory every
# 20 s. The model is the same-work PPO benchmark's random BRME (small shape, vocab 8192; speed
# does not depend on its weights). Prints the client's JSON.
#
#   bench/soak.sh [SECS] [CLIENTS]     # writes under out/soak/
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-160}
CLIENTS=${2:-32}
OUT=out/soak
make --quiet setup
cargo build --quiet --release --bin rrlhf --bin rrlhf-soak --bin rrlhf-ppo-bench
target/release/rrlhf-ppo-bench --out out/ppo-step --prepare-only > /dev/null
mkdir -p "$OUT"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
taskset -c 0 target/release/rrlhf serve reward --model out/ppo-step/models/brme \
  --addr "127.0.0.1:$PORT" --max-length 512 > "$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2> /dev/null || true' EXIT
for _ in $(seq 100); do
  grep -q "serving\|listening" "$OUT/server.log" 2> /dev/null && break
  sleep 0.2
done
sleep 1
taskset -c 1 target/release/rrlhf-soak --url "http://127.0.0.1:$PORT" --clients "$CLIENTS" \
  --secs "$SECS" --server-pid "$SERVER" | tee "$OUT/soak.json"
