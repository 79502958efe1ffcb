# oig: `make demo` runs the main job offline; `make test` runs every test. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OIG := $(BIN)/oig
# torch is pinned here, not in the lock: the same version is a CPU build on CPU machines (from this
# machine's disk or the CPU index) and a CUDA build on the GPU runner (its TORCH_SPEC variable, README).
TORCH_SPEC ?= torch==2.13.0
# Every other package comes from the lock. Refresh it on purpose with `make lock`, never by accident.
LOCK := requirements/lock.txt
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: setup setup-core lock demo generate-demo history-demo test lint bench clean

setup: $(VENV)/.installed

# Reinstalls only when pyproject.toml or the lock changes; torch goes first and pinned, so nothing
# pulls a CUDA build; everything else at the lock's versions.
$(VENV)/.installed: pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -c $(LOCK) -e ".[train,dev,eval]"
	touch $@

# The light install that data-PR CI uses: validate and mix, no torch.
setup-core:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c $(LOCK) -e .

# Resolve pyproject.toml's dependencies afresh and rewrite the lock (review the diff, then commit).
# LOCK_PINS="name==version ..." holds packages at a version while the rest resolve.
lock:
	PYTHON=$(PYTHON) TORCH_SPEC="$(TORCH_SPEC)" bash scripts/lock.sh

demo: setup
	HF_HUB_OFFLINE=1 bash scripts/demo.sh

# Offline: two `oig serve` instances with tiny models answer, a tiny reward model judges.
generate-demo: setup
	HF_HUB_OFFLINE=1 bash scripts/generate_demo.sh runs/generate-demo

# Offline: three tiny training runs in a throw-away git repository, their history site and screenshots
# (runs/history-demo/).
history-demo: setup
	HF_HUB_OFFLINE=1 bash scripts/history_demo.sh

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check scripts tests benchmarks

bench: setup
	$(BIN)/python benchmarks/bench_validate.py
	$(BIN)/python benchmarks/bench_mix.py
	$(BIN)/python benchmarks/bench_generate.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_eval.py

clean:
	rm -rf $(VENV) runs build *.egg-info scripts/*.egg-info
