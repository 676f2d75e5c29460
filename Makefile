# `make demo` and `make test` work on a fresh clone: each creates (or reuses) .venv first.
PYTHON ?= python3
VENV ?= .venv
# The CPU build; an existing torch in the venv (a CUDA or XPU build you installed) is kept.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test test-fast test-min demo bench gpu-check gpu-run lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -e ".[jax,torch,tensorboard,dev]"
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -n 2 --dist loadfile -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

demo: setup
	$(BIN)/vae demo

bench: setup
	$(BIN)/vae bench --arch mlp --batch-size 128 --dtype float32 --device cpu --json runs/bench/cpu.json --plot runs/bench/cpu.png

# For CUDA users: `vae check` on the GPU (parity MLP and conv in float64, float32 with TF32 off
# and bf16, a 20-step trajectory, every training mode timed; a few minutes), the report in
# runs/check/cuda.json. Needs torch's CUDA build (and jax[cuda] for JAX's side on the GPU;
# without it JAX runs on the CPU and the report says so). Exit 1 if a check fails.
gpu-check: setup
	XLA_PYTHON_CLIENT_PREALLOCATE=false $(BIN)/vae check --device cuda --json runs/check/cuda.json

# Everything the README's GPU figures need in one run, each step under its own time limit
# (versions, `vae check`, a short `vae train --cuda-graph`, a summary against the targets):
# runs/gpu/summary.txt. .ci/gpu_run also runs from a plain checkout without this venv.
gpu-run: setup
	PYTHON=$(BIN)/python bash .ci/gpu_run runs/gpu cuda

# The same four packages the pre-commit hook checks; mypy's settings are in pyproject.toml.
TYPED_PACKAGES := vae_common vae_jax vae_torch vae_tools

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy $(TYPED_PACKAGES)

# The fast tests against the LOWEST versions pyproject.toml declares, in a venv of their own
# (not part of CI). .ci/lowest_constraints.py turns each `>=X` of the dependencies and the
# jax/torch/dev extras into `==X`; what those packages pull in resolves as usual.
# Torch: PyPI has no CPU-only torch wheel for Linux x86_64, and its wheels link
# libtorch_cuda.so against the CUDA runtime, so `import torch` needs the nvidia-* packages even
# on a machine without a GPU (torch 2.4.0 installed with `--no-deps` stops at import: "libcublas.so
# not found"). The lowest declared torch therefore comes with its CUDA libraries and triton:
# 2.8 GB to download (once per pip cache), 5.9 GB in the venv.
MIN_VENV ?= .venv-min

test-min:
	test -x $(MIN_VENV)/bin/python || $(PYTHON) -m venv $(MIN_VENV)
	$(PYTHON) .ci/lowest_constraints.py pyproject.toml jax torch dev > $(MIN_VENV)/constraints.txt
	$(MIN_VENV)/bin/python -m pip install -c $(MIN_VENV)/constraints.txt -e ".[jax,torch,dev]"
	$(MIN_VENV)/bin/python -m pip check
	$(MIN_VENV)/bin/python -m pip freeze --exclude-editable | grep -i -E \
	  '^(numpy|safetensors|scikit-learn|matplotlib|tqdm|jax|jaxlib|flax|optax|torch|pytest|hypothesis)=='
	$(MIN_VENV)/bin/python -m pytest -q -p no:cacheprovider -m "not slow"

# Mutation score (not part of `make test` or CI; hours on 2 cores, so run it at low priority:
# `nohup nice -n 19 make mutation &`). cosmic-ray, pinned, lives in a venv of its own; it mutates
# private copies of the tree only (README, "Mutation score"). Results: runs/mutation/*.md.
# MUTATION_ARGS goes to both scripts (`--rev HEAD` scores the last commit instead of the working
# tree, `--without tests/test_x.py` scores without a test file); GENERIC_ARGS to cosmic-ray's
# (`--sample 6` tests every 6th mutant, `--jobs 2` two files at once).
MUTATION_VENV ?= runs/mutation/venv
COSMIC_RAY_SPEC ?= cosmic-ray==8.7.0
MUTATION_ARGS ?=
GENERIC_ARGS ?=

.PHONY: mutation
mutation: setup
	test -f $(MUTATION_VENV)/.installed-$(COSMIC_RAY_SPEC) || { \
	  $(PYTHON) -m venv $(MUTATION_VENV) && \
	  $(MUTATION_VENV)/bin/python -m pip install "$(COSMIC_RAY_SPEC)" && \
	  touch $(MUTATION_VENV)/.installed-$(COSMIC_RAY_SPEC); }
	$(BIN)/python mutation/symmetric.py $(MUTATION_ARGS); status=$$?; \
	  $(BIN)/python mutation/generic.py --cosmic-ray $(MUTATION_VENV)/bin $(MUTATION_ARGS) \
	    $(GENERIC_ARGS) && \
	  exit $$status

clean:
	rm -rf runs .pytest_cache
