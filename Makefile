# oig: `make demo` runs the main job offline; `make test` runs every test. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OIG := $(BIN)/oig
# A CPU build of torch on machines without a GPU; a GPU runner sets TORCH_SPEC=torch (see README).
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: setup setup-core demo generate-demo test lint bench clean

setup: $(VENV)/.installed

# Reinstalls only when pyproject.toml changes; torch goes first and pinned, so nothing pulls a CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[train,dev]"
	touch $@

# The light install that data-PR CI uses: validate and mix, no torch.
setup-core:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e .

demo: setup
	HF_HUB_OFFLINE=1 bash scripts/demo.sh

# Offline: two `oig serve` instances with tiny models answer, a tiny reward model judges.
generate-demo: setup
	HF_HUB_OFFLINE=1 bash scripts/generate_demo.sh runs/generate-demo

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check scripts tests benchmarks

bench: setup
	$(BIN)/python benchmarks/bench_validate.py
	$(BIN)/python benchmarks/bench_mix.py
	$(BIN)/python benchmarks/bench_generate.py
	$(BIN)/python benchmarks/bench_train.py

clean:
	rm -rf $(VENV) runs build *.egg-info scripts/*.egg-info
