#!/usr/bin/env bash
# The same-work PPO step, rrlhf against TRL 1.12.0's PPO, in one run (issue 15): random models
# of one shape (default: small preset, vocab 8192 — Llama hidden 256, 4 layers, 8/4 heads),
# 128 prompts of 48 random token ids, responses sampled to exactly 32 tokens, one PPO epoch in
# 4 mini-batches of 32, f32 on CPU. Both sides load the same checkpoints and prompts
# (`rrlhf-ppo-bench --prepare-only`). rrlhf runs its four services on loopback with
# `run.sequences_per_call = 32` (each chunk of 32 samples is one reference, critic and reward
# call). Two settings: 2 cores (rrlhf's engines at one thread per
# core, TRL with 2 torch threads) and 1 core (both pinned to core 0 with taskset, 1 thread).
# Prints one markdown table; the ratio is TRL's step time over rrlhf's (> 1: rrlhf faster).
#
#   bench/ppo_step.sh [PPO_STEPS]      # default 5 (the first is a warm-up); writes under out/ppo-step/
#
# TRL and its dependencies go into bench/.venv-trl (not `make setup`); it sees the torch 2.11.0
# and transformers of .venv through a .pth file, so both sides run the same libtorch.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-5}
OUT=out/ppo-step
PEER=bench/.venv-trl
make --quiet setup
cargo build --quiet --release --bin rrlhf-ppo-bench
BIN=target/release/rrlhf-ppo-bench
if [ ! -f "$PEER/.setup-done" ]; then
  python3 -m venv "$PEER"
  site() { "$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
  site .venv/bin/python > "$(site "$PEER/bin/python")/rrlhf-venv.pth"
  "$PEER/bin/python" -m pip install --quiet --disable-pip-version-check trl==1.12.0 datasets==4.8.5
  touch "$PEER/.setup-done"
fi
"$BIN" --out "$OUT" --prepare-only > /dev/null
field() { grep -o "\"$1\": *[0-9.e-]*" | sed 's/.*: *//'; }
echo "| cores | threads | rrlhf step | generate | score tail | train | TRL step | generate | score | train | TRL ÷ rrlhf |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for cores in 2 1; do
  pin=() threads=0 peer_threads=2
  [ "$cores" = 1 ] && pin=(taskset -c 0) threads=1 peer_threads=1
  ours=$("${pin[@]}" "$BIN" --out "$OUT" --tag "rrlhf-c$cores" --steps "$STEPS" --threads "$threads" \
    --sequences-per-call 32 2> "$OUT/rrlhf-c$cores.log" | tee "$OUT/rrlhf-c$cores.json")
  peer=$("${pin[@]}" "$PEER/bin/python" bench/ppo_peer.py --models "$OUT/models" --steps "$STEPS" \
    --threads "$peer_threads" 2> "$OUT/trl-c$cores.log" | tee "$OUT/trl-c$cores.json")
  o_step=$(field step_secs <<< "$ours") p_step=$(field step_secs <<< "$peer")
  printf "| %s | %s | %.2f s | %.2f s | %.2f s | %.2f s | %.2f s | %.2f s | %.2f s | %.2f s | %.2f |\n" \
    "$cores" "$peer_threads" "$o_step" "$(field generate_secs <<< "$ours")" \
    "$(field score_tail_secs <<< "$ours")" "$(field train_secs <<< "$ours")" \
    "$p_step" "$(field generate_secs <<< "$peer")" "$(field score_secs <<< "$peer")" \
    "$(field train_secs <<< "$peer")" "$(awk "BEGIN {print $p_step / $o_step}")"
done
