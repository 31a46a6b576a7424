#!/usr/bin/env bash
# Reproduces docs/reproduction.md §2, the gold-reward testbed: a fresh annotation sample and
# fresh proxies per seed (single RM, the paper's BRME, a diverse BRME, a deep ensemble), PPO
# through the real services for every condition and seed, then the tables and plots.
# Usage: experiments/overopt_report.sh [rrlhf experiment overopt flags…]  (default: runs/overopt,
# 10 seeds × 14 conditions). Long: run it in the background, e.g.
#   nohup experiments/overopt_report.sh > runs/overopt.log 2>&1 &
# Resumable: finished proxies and runs are reused, an interrupted run resumes from its checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
make --no-print-directory setup >/dev/null
export VIRTUAL_ENV=$PWD/.venv PATH=$PWD/.venv/bin:$PATH LIBTORCH_USE_PYTORCH=1
cargo build --quiet --bin rrlhf
# The policy every proxy and run starts from: `make run`'s SFT model.
[ -f runs/demo/sft/model.safetensors ] || target/debug/rrlhf run --ppo-steps 1 --samples 0
exec target/debug/rrlhf experiment overopt "$@"
