# One entry point for the three users: `make reproduce` (the pipeline), `make test` (CI), `make bench`.
# Everything installs itself on a fresh machine: a pinned venv (.venv) from requirements.lock.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export nnUNet_compile ?= f
export nnUNet_n_proc_DA ?= 0
export nnUNet_def_n_proc ?= 2
export PYTHONUNBUFFERED := 1

.PHONY: setup system-deps reproduce test test-fast lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (the pins are for CPython 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check pip==24.3.1
	$(BIN)/pip install -q --disable-pip-version-check -c requirements.lock -e '.[dev]'
	touch $@

# Debian packages the Docker and SLURM test stages need (root, idempotent; skipped when present).
system-deps:
	bash scripts/install-system-deps.sh

reproduce: setup
	$(BIN)/pgps reproduce

lint: setup
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

test: setup system-deps
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/python -m pytest -q --timeout=1500

# the fast tier: no training, no daemons
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not docker and not slurm"

bench: setup
	$(BIN)/python benchmarks/run_benchmark.py

clean:
	rm -rf .pytest_cache .ruff_cache .hypothesis
