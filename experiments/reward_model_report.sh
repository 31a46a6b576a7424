#!/usr/bin/env bash
# Reproduces docs/reward-model.md: tokenizer → SFT → stage-1 Bradley–Terry RM → stage-2 BRME
# (K = 5) → evaluation on the held-out pairs, all on the shared HH-RLHF harmless-base test split.
# Usage: experiments/reward_model_report.sh [OUT_DIR] (default runs/rm-report). Seed 0 everywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/rm-report}
DATA=../shared/data/hh-rlhf/harmless-base-test.jsonl.gz
make --no-print-directory setup >/dev/null
export VIRTUAL_ENV=$PWD/.venv PATH=$PWD/.venv/bin:$PATH LIBTORCH_USE_PYTORCH=1
cargo build --quiet --bin rrlhf
R=target/debug/rrlhf
mkdir -p "$OUT"

# SFT backbone: a `small` Llama (hidden 256, 4 layers; 3.4 M parameters with this 2k vocabulary).
$R tokenizer train --data $DATA --vocab-size 2048 --out "$OUT/tokenizer"
$R model init --arch llama --size small --tokenizer "$OUT/tokenizer" --out "$OUT/init" --seed 0
$R sft --model "$OUT/init" --data $DATA --out "$OUT/sft" \
  --steps 800 --batch-size 16 --lr 1e-3 --warmup-steps 80 --max-len 192 --seed 0

# Stage 1: Bradley–Terry RM on the SFT backbone (90 % of pairs; 10 % held out, seed 0).
$R rm train --stage 1 --base "$OUT/sft" --data $DATA --out "$OUT/rm-stage1" \
  --epochs 2 --batch-size 16 --lr 3e-4 --max-len 192 --seed 0
# Stage 2: BRME, K = 5 heads, α = 2, backbone from stage 1, each pair assigned to one head.
$R rm train --stage 2 --base "$OUT/rm-stage1" --data $DATA --out "$OUT/rm-brme" \
  --epochs 2 --batch-size 16 --lr 3e-4 --max-len 192 --heads 5 --alpha 2 --seed 0
# Evaluation on the held-out 10 % (the same split both stages validated on).
$R rm eval --model "$OUT/rm-brme" --data $DATA --max-len 192 --plots "$OUT/plots" --json > "$OUT/eval.json"
$R rm eval --model "$OUT/rm-brme" --data $DATA --max-len 192 --plots "$OUT/plots"
# Calibration for heterologous fusion.
$R rm calibrate --model "$OUT/rm-brme" --data $DATA --max-len 192
