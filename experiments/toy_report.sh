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
run() { local name=$1; shift; echo "== $name: $*"; $R toy --seeds 50 --out "$OUT/$name" "$@" | tee "$OUT/$name.txt"; }

run default                                   # per-prompt RM, 2 rejected/prompt, 3 extra RMs, β 0.05
run joint-rm          --rm-arch joint         # one score from prompt ⊕ response one-hots
run coverage-4        --pairs-per-prompt 4    # more data per prompt
run coverage-1        --pairs-per-prompt 1    # less
run raw-scale         --no-standardize        # aggregate raw BT scores
run long-ppo          --ppo-iters 300
run beta-0.5          --beta 0.5              # strong KL anchor to the initial policy
run one-extra-rm      --extra-rms 1
