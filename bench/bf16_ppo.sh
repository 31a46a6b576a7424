#!/usr/bin/env bash
# bf16 vs f32 end to end: `rrlhf run` (the README's main job: SFT, both reward-model stages and
# PPO through the four services) once in f32 and once with --dtype bf16, same seed and data;
# prints the PPO curves side by side and the final summary lines.
#
#   bench/bf16_ppo.sh [EXTRA rrlhf run ARGS...]      writes under out/bf16-ppo/
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=out/bf16-ppo
make --quiet setup
cargo build --quiet --bin rrlhf
mkdir -p "$OUT"
for dtype in f32 bf16; do
  [ -f "$OUT/$dtype/summary.json" ] ||
    OMP_WAIT_POLICY=PASSIVE target/debug/rrlhf run --out "$OUT/$dtype" --dtype $dtype "$@" > "$OUT/$dtype.log" 2>&1
done
# "step N | S reward R (…) | KL K β … | len L …" → "N R K L"
curve() { sed -nE 's/^step +([0-9]+) \| [^ ]+ reward ([-+0-9.]+).*KL ([-0-9.]+).*len ([0-9.]+).*/\1 \2 \3 \4/p' "$OUT/$1.log"; }
echo "| PPO step | f32 reward | f32 KL | f32 length | bf16 reward | bf16 KL | bf16 length |"
echo "|---|---|---|---|---|---|---|"
join <(curve f32) <(curve bf16) | awk '{printf "| %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7}'
for dtype in f32 bf16; do
  echo
  echo "$dtype:"
  sed -n '/== rrlhf run: summary ==/,/^$/p' "$OUT/$dtype.log" | grep -E '^(held-out|reward model|ppo|  )'
done
