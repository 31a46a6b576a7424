#!/usr/bin/env bash
# Rollouts as PPO makes them (issue 15): 128 HH-RLHF prompts of mixed lengths (≤ 400 characters,
# as `rrlhf run` samples them), sampling at temperature 1 until EOS or 32 new tokens, with the
# `make run` SFT policy; useful tokens/s of rrlhf's continuous-batching engine against
# transformers' `generate` on the same prompt ids (one left-padded batch of 128, and batches of
# 64 as TRL's PPO generates), for 1 and 2 threads. Prints one markdown table.
#
#   bench/rollout_speed.sh [MODEL_DIR]     # default runs/demo/sft (run `make run` first)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-runs/demo/sft}
OUT=out/rollout-speed
[ -f "$MODEL/model.safetensors" ] || { echo "no model in $MODEL: run \`make run\` first" >&2; exit 1; }
make --quiet setup
cargo build --quiet --release --bin rrlhf-rollout-bench
mkdir -p "$OUT"
field() { grep -o "\"$1\": *[0-9.e-]*" | sed 's/.*: *//'; }
echo "| threads | rrlhf tok/s | transformers, batch 128 | batch 64 | rrlhf ÷ best transformers |"
echo "|---|---|---|---|---|"
for threads in 1 2; do
  ours=$(target/release/rrlhf-rollout-bench --model "$MODEL" --threads "$threads" \
    --write-prompts "$OUT/prompts.json" | tee "$OUT/rrlhf-t$threads.json")
  b128=$(.venv/bin/python bench/rollout_peer.py --model "$MODEL" --prompts "$OUT/prompts.json" \
    --threads "$threads" --batch 128 2> /dev/null | tee "$OUT/hf128-t$threads.json")
  b64=$(.venv/bin/python bench/rollout_peer.py --model "$MODEL" --prompts "$OUT/prompts.json" \
    --threads "$threads" --batch 64 2> /dev/null | tee "$OUT/hf64-t$threads.json")
  o=$(field tokens_per_s <<< "$ours") p=$(field tokens_per_s <<< "$b128") q=$(field tokens_per_s <<< "$b64")
  printf "| %s | %.0f | %.0f | %.0f | %.2f |\n" "$threads" "$o" "$p" "$q" \
    "$(awk "BEGIN {b = $p > $q ? $p : $q; print $o / b}")"
done
