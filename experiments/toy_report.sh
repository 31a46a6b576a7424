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

# Ensembling vs pessimism, seed by seed: each robust λ against the `mean` control.
python3 - "$OUT" <<'PY'
import json, math, os, sys
out = sys.argv[1]
def sign_p(w, l):
    n, k = w + l, min(w, l)
    return 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)
print("\n| variant | condition | vs mean: wins / losses / ties | sign test p |\n|---|---|---|---|")
for name in sorted(os.listdir(out)):
    path = os.path.join(out, name, "toy.json")
    if not os.path.exists(path):
        continue
    r = json.load(open(path))
    names = [c["name"] for c in r["conditions"]]
    m = names.index("mean of RMs")
    for c, cname in enumerate(names):
        if not cname.startswith("robust"):
            continue
        d = [s["outcomes"][c]["correct"] - s["outcomes"][m]["correct"] for s in r["seeds"]]
        w, l, t = sum(x > 0 for x in d), sum(x < 0 for x in d), sum(x == 0 for x in d)
        print(f"| {name} | {cname} | {w} / {l} / {t} | {sign_p(w, l):.3f} |")
PY
