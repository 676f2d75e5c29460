# `make demo` and `make test` work on a fresh clone: each creates (or reuses) .venv first.
PYTHON ?= python3
VENV ?= .venv
# The CPU build; an existing torch in the venv (a CUDA or XPU build you installed) is kept.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test test-fast demo bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -e ".[jax,torch,dev]"
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -n 2 --dist loadfile -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

demo: setup
	$(BIN)/vae demo

bench: setup
	$(BIN)/vae bench --arch mlp --batch-size 128 --dtype float32 --device cpu --json runs/bench/cpu.json --plot runs/bench/cpu.png

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf runs .pytest_cache
