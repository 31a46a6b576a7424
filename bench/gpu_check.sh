#!/usr/bin/env bash
# GPU readiness check: build, bf16 parity with transformers on the device, one c10d group, and
# tokens/s of generate and train.
#
#   bench/gpu_check.sh [--device cuda|cuda:N|cpu] [--profile release|debug] [--no-build]
#
# 1. builds the release benchmarks against the torch in $PYTHON's environment (a CUDA wheel
#    gives a CUDA build; NCCL support comes with it, see crates/dist/build.rs);
# 2. bench/gpu_parity.py: a random Llama built by transformers, logits of the same ids from
#    transformers and rrlhf in f32 and bf16 on the device (passes when rrlhf f32 matches and
#    rrlhf bf16 is within 2x of transformers' own bf16 error);
# 3. one process group through rrlhf-dist: NCCL over the visible GPUs (one rank each), or two
#    Gloo ranks with --device cpu; an all-reduce whose sums are checked;
# 4. rrlhf-bench on the parity model in f32 and bf16: generate and train tokens/s.
# With --device cpu every step runs on CPU; `make test` runs it so (debug profile), so the
# script cannot rot while no GPU is at hand.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda
PROFILE=release
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --profile) PROFILE=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    *) echo "usage: $0 [--device cuda|cuda:N|cpu] [--profile release|debug] [--no-build]" >&2; exit 2 ;;
  esac
done
case "$PROFILE" in
  release) PROFILE_FLAG=--release ;;
  debug) PROFILE_FLAG= ;;
  *) echo "gpu_check: --profile $PROFILE: expected release or debug" >&2; exit 2 ;;
esac
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
# torch-sys links the libtorch of the torch package that this Python imports.
export PATH="$(dirname "$(command -v "$PYTHON")"):$PATH" LIBTORCH_USE_PYTORCH=1
"$PYTHON" -c 'import torch, transformers, safetensors' 2>/dev/null || {
  echo "gpu_check: $PYTHON lacks torch, transformers or safetensors (make setup installs them)" >&2
  exit 1
}
CUDA=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')
case "$DEVICE" in
  cuda*) [ "$CUDA" -gt 0 ] || { echo "gpu_check: torch sees no CUDA device" >&2; exit 1; } ;;
  cpu) ;;
  *) echo "gpu_check: --device $DEVICE: expected cuda, cuda:N or cpu" >&2; exit 2 ;;
esac
echo "== gpu_check on $DEVICE: torch $("$PYTHON" -c 'import torch; print(torch.__version__)'), $CUDA CUDA device(s)"
if [ "$BUILD" = 1 ]; then
  echo "== [1/4] build"
  cargo build $PROFILE_FLAG --quiet -p rrlhf-bench
fi
BIN=target/$PROFILE
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

echo "== [2/4] bf16 parity with transformers"
"$PYTHON" bench/gpu_parity.py --device "$DEVICE" --out "$WORK/model" --rrlhf-bench $BIN/rrlhf-bench

echo "== [3/4] one process group"
if [ "$DEVICE" = cpu ]; then WORLD=2; else WORLD=$CUDA; fi
PORT=$((29500 + RANDOM % 1000))
pids=()
for ((r = 0; r < WORLD; r++)); do
  if [ "$DEVICE" = cpu ]; then DEV=cpu; else DEV=cuda:$r; fi
  $BIN/rrlhf-allreduce-bench --rank $r --world $WORLD --store 127.0.0.1:$PORT --device $DEV --repeats 5 \
    > "$WORK/group.$r.json" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
cat "$WORK/group.0.json"

echo "== [4/4] tokens/s (batch 8: 32-token prompts + 64 new tokens; train on 128 tokens)"
for dtype in f32 bf16; do
  $BIN/rrlhf-bench --model "$WORK/model" --device "$DEVICE" --dtype $dtype --threads "${THREADS:-2}" --repeats 3
done
echo "== gpu_check passed on $DEVICE"
