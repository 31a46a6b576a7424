# rrlhf — the README's commands. `make setup` is idempotent; `make test` is what CI runs.

VENV      := $(CURDIR)/.venv
PY        := $(VENV)/bin/python
STAMP     := $(VENV)/.setup-done
CARGO     := cargo

# torch-sys finds libtorch in the venv's torch wheel: it runs `python` from PATH when
# VIRTUAL_ENV is set. Binaries get an rpath to torch/lib from our build scripts.
export VIRTUAL_ENV := $(VENV)
export PATH := $(VENV)/bin:$(PATH)
export LIBTORCH_USE_PYTORCH := 1
export CARGO_BUILD_JOBS ?= 2
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_PROGRESS_BARS := 1

.PHONY: setup build run test lint fmt bench clean-venv

setup: $(STAMP)

$(STAMP): python/requirements.txt
	@command -v python3 >/dev/null || { echo "python3 is required"; exit 1; }
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r python/requirements.txt
	@$(PY) -c "import torch; assert torch.__version__.split('+')[0] == '2.11.0', torch.__version__"
	@touch $@

build: setup
	$(CARGO) build --workspace

# The main job on the embedded default (see `rrlhf run --help` for its knobs).
run: setup
	$(CARGO) run --quiet --bin rrlhf -- run $(ARGS)

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Tests run in parallel: one libtorch/OpenMP thread each, and idle workers that sleep.
test: lint
	OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE $(CARGO) test --workspace
	bench/gpu_check.sh --device cpu --profile debug

fmt:
	$(CARGO) fmt --all

bench: setup
	$(CARGO) build --release --bin rrlhf-bench
	$(PY) bench/model_speed.py $(ARGS)

clean-venv:
	rm -rf $(VENV)
