#!/usr/bin/env bash
# Reproduces the toy-model section of docs/reproduction.md: the default toy (50 paired seeds) and
# the design variants that decide its outcome, each into its own directory.
# Usage: experiments/toy_report.sh [OUT_DIR] (default runs/toy-report).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/toy-report}
make --no-print-directory setup >/dev/null
export VIRTUAL_ENV=$PWD/.venv PATH=$PWD/.venv/bin:$PATH LIBTORCH_USE_PYTORCH=1
cargo build --quiet --bin rrlhf
R=target/debug/rrlhf
mkdir -p "$OUT"
# A finished variant (its toy.json exists) is not run again.
run() {
  local name=$1 seeds=$2; shift 2
  [ -f "$OUT/$name/toy.json" ] && { echo "== $name: done"; return; }
  echo "== $name ($seeds seeds): $*"
  $R toy --seeds "$seeds" --out "$OUT/$name" "$@" | tee "$OUT/$name.txt"
}

run default       50                          # per-prompt RM, 2 rejected/prompt, 3 extra RMs, β 0.05
run joint-rm      50 --rm-arch joint          # one score from prompt ⊕ response one-hots
run coverage-4    50 --pairs-per-prompt 4     # more data per prompt
# The remaining variants on the first 20 of the same seeds (paired with default's seeds 0–19).
run coverage-1    20 --pairs-per-prompt 1     # less data
run raw-scale     20 --no-standardize         # aggregate raw BT scores
run one-extra-rm  20 --extra-rms 1            # a smaller uncertainty set
run beta-0.5      20 --beta 0.5               # strong KL anchor to the initial policy
run long-ppo      20 --ppo-iters 300
run partition     20 --multi-head partition   # BRME-style: each head on its own quarter of the pairs
run uwo-sweep     20 --uwo-c 0.25,1,4,16 --lambdas 0.4  # UWO's c beyond the default 0.5 and 2

# Pessimism vs averaging and shared trunk vs independent RMs, seed by seed, every variant
# (from each toy.json's `vs_mean` and `multi_vs_deep`).
python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
runs = []
for name in sorted(os.listdir(out)):
    path = os.path.join(out, name, "toy.json")
    if os.path.exists(path):
        runs.append((name, json.load(open(path))))
for key, title in [("vs_mean", "against its ensemble's mean"),
                   ("multi_vs_deep", "multi-head against deep ensemble")]:
    print(f"\n| variant | condition | {title} | wins / losses / ties | sign test p |\n|---|---|---|---|---|")
    for name, r in runs:
        for c in r.get(key, []):
            print(f"| {name} | {c['a']} | {c['b']} | {c['wins']} / {c['losses']} / {c['ties']} | {c['sign_test_p']:.3f} |")
PY
