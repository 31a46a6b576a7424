#!/usr/bin/env bash
# bf16 vs f32 SFT from the same start: held-out loss drop of each and their ratio.
#
#   bench/bf16_sft.sh [SIZE] [STEPS] [LRS...]      e.g. bench/bf16_sft.sh tiny 150 1e-5 1e-4
#
# Builds a tokenizer and a random model of SIZE (tiny | small) on the shared HH-RLHF data once
# (under out/bf16-sft/), then runs `rrlhf sft` in f32 and in bf16 at each learning rate with the
# same seed and data, and prints one table row per learning rate.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-tiny}
STEPS=${2:-150}
shift $(( $# > 2 ? 2 : $# ))
LRS=("$@")
[ ${#LRS[@]} -gt 0 ] || LRS=(1e-5 1e-4)
DATA=../shared/data/hh-rlhf/harmless-base-test.jsonl.gz
OUT=out/bf16-sft/$SIZE
make --quiet setup
cargo build --quiet --bin rrlhf
RRLHF=target/debug/rrlhf
mkdir -p "$OUT"
[ -f "$OUT/tok/tokenizer.json" ] || $RRLHF tokenizer train --data $DATA --vocab-size 2048 --out "$OUT/tok" >/dev/null
[ -f "$OUT/init/config.json" ] || $RRLHF model init --arch llama --size "$SIZE" --seed 0 --tokenizer "$OUT/tok" --out "$OUT/init" >/dev/null
drop() { # lr dtype → "before after"
  $RRLHF sft --model "$OUT/init" --data $DATA --out "$OUT/sft-$1-$2" --steps "$STEPS" \
    --batch-size 16 --lr "$1" --dtype "$2" --threads 2 2>&1 |
    sed -n 's/.*held-out loss \([0-9.]*\) → \([0-9.]*\).*/\1 \2/p' | tail -1
}
echo "| preset | steps | lr | f32 held-out loss | bf16 held-out loss | bf16 drop ÷ f32 drop |"
echo "|---|---|---|---|---|---|"
for lr in "${LRS[@]}"; do
  read -r b32 a32 <<<"$(drop "$lr" f32)"
  read -r b16 a16 <<<"$(drop "$lr" bf16)"
  ratio=$(python3 -c "print(f'{($b16-$a16)/($b32-$a32):.3f}')")
  echo "| $SIZE | $STEPS | $lr | $b32 → $a32 | $b16 → $a16 | $ratio |"
done
