#!/usr/bin/env bash
# Thread budget of the embedded cluster (`rrlhf run`: four services and the orchestrator in one
# process): the PPO step on the issue-15 shapes (small preset, vocab 8192, 128 HH prompts, 32
# new tokens) for libtorch intra-op threads 1 and 2 per engine, with OpenMP's idle workers
# spinning (OMP_WAIT_POLICY=ACTIVE), sleeping (PASSIVE), or left to libgomp's default (unset:
# spin a while, then sleep; passed as an empty OMP_WAIT_POLICY, which libgomp ignores and
# rrlhf keeps). SFT and the reward models are trained
# once (briefly: only the step time matters) and reused by every setting; each setting runs
# fresh PPO steps and reports the median step and its generate / score-tail / train split.
#
#   [POLICIES="ACTIVE PASSIVE unset"] [THREADS="1 2"] bench/thread_budget.sh [PPO_STEPS]
#   writes under out/thread-budget/
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=out/thread-budget
STEPS=${1:-5}
make --quiet setup
cargo build --quiet --release --bin rrlhf
BIN=target/release/rrlhf
ARGS=(--size small --vocab-size 8192 --max-new-tokens 32 --sft-steps 40 --rm-steps 20 --samples 0)
mkdir -p "$OUT"
[ -f "$OUT/base/summary.json" ] ||
  "$BIN" run --out "$OUT/base" "${ARGS[@]}" --ppo-steps 1 > "$OUT/base.log" 2>&1
median() { sort -n | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
field() { grep -o "\"$1\":[0-9.e-]*" "$2" | tail -n +2 | cut -d: -f2 | median; }
echo "| intra-op threads per engine | OMP_WAIT_POLICY | step (median of $((STEPS - 1))) | generate | score tail | train |"
echo "|---|---|---|---|---|---|"
for policy in ${POLICIES:-ACTIVE PASSIVE unset}; do
  for threads in ${THREADS:-1 2}; do
    dir="$OUT/t$threads-$policy"
    rm -rf "$dir" && mkdir -p "$dir"
    for stage in sft rm-stage1 rm-brme tokenizer init; do
      [ -e "$OUT/base/$stage" ] && cp -r "$OUT/base/$stage" "$dir/"
    done
    value=$policy && [ "$policy" = unset ] && value=""
    OMP_WAIT_POLICY=$value "$BIN" run --out "$dir" "${ARGS[@]}" --ppo-steps "$STEPS" \
      --threads "$threads" > "$dir.log" 2>&1
    m="$dir/ppo/metrics.jsonl"
    # The first step (warm-up) is left out of the medians.
    printf "| %s | %s | %.2f s | %.2f s | %.2f s | %.2f s |\n" "$threads" "$policy" \
      "$(field step_secs "$m")" "$(field generate_secs "$m")" \
      "$(field score_tail_secs "$m")" "$(field train_secs "$m")"
  done
done
