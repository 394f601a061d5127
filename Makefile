# One entry point for the three users: `make reproduce` (the pipeline), `make test` (CI), `make bench`.
# Everything installs itself on a fresh machine: a venv (.venv) with exactly requirements.lock, every file
# checked against its sha256 (--require-hashes), then this checkout on top (--no-deps: nothing re-resolved).
# The trainer package alone, for your own nnU-Net: `pip install .` (see README, "Installing the trainers").
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# uv reads no pip configuration: the system's certificates (--system-certs) or the CA bundle pip is told of (a
# TLS-intercepting proxy), and pip's local wheel folder
UV_CERT := $(if $(PIP_CERT),SSL_CERT_FILE=$(PIP_CERT))
UV_FIND_LINKS := $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS))
export nnUNet_compile ?= f
export nnUNet_n_proc_DA ?= 0
export nnUNet_def_n_proc ?= 2
export PYTHONUNBUFFERED := 1

.PHONY: setup system-deps reproduce test test-exact test-fast lint lock bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (the pins are for CPython 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check pip==24.3.1
	@# uv installs the lock: the same files, checked against the same sha256s, unpacked on all cores (measured: pip 51 s
	@# on one core, uv 17 s with an empty cache). uv itself comes from the lock, hash-checked, through pip.
	awk '/^uv==/{p=1} p{print; if ($$0 !~ /\\$$/) exit}' requirements.lock >$(VENV)/uv-requirement.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --require-hashes -r $(VENV)/uv-requirement.txt
	$(UV_CERT) $(BIN)/uv pip install -q --system-certs --python $(BIN)/python --require-hashes $(UV_FIND_LINKS) \
	  -r requirements.lock
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@# Bytecode for every module, on all cores (pip's own compile is one core): where PYTHONDONTWRITEBYTECODE is set
	@# (the development machine sets it) Python never writes .pyc, so without this every process compiled what it
	@# imported again: ~10 CPU-s per nnU-Net training (timm alone, imported by nnU-Net's trainer lookup), ~1.5 s per
	@# dvc call. ~45 CPU-s once. Test suites are skipped, and torch's one Python-3.12-only file; `testing` packages are
	@# not: torch, numpy, pandas and triton import theirs at start-up (~50 ms of compiling per process without .pyc).
	$(BIN)/python -m compileall -q -j 0 -x '/tests?/|/torch/testing/_internal/py312_' $(VENV)/lib src >/dev/null
	touch $@

# Debian packages the Docker and SLURM test stages need (root, idempotent; skipped when present).
system-deps:
	bash scripts/install-system-deps.sh

reproduce: setup
	$(BIN)/pgps reproduce

lint: setup
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/mypy  # src/, configured in pyproject.toml

# scripts/run-tests.sh: the Docker/SLURM stages (mostly waiting: image build, queue) run beside the CPU-bound rest,
# one math thread per process (a third group was measured slower: 2060 s against 1555 s);
# tests/test_core_install.py's fresh Python 3.12 venv installs in the background from collection on and runs last
# (tests/conftest.py); each half lists its slowest tests at the end. Extra pytest arguments: make test ARGS="-x".
test:
	@$(MAKE) --no-print-directory -j2 setup system-deps  # pip's venv and apt's packages side by side (CI set-up)
	$(BIN)/ruff check src tests benchmarks scripts
	PY=$(BIN)/python bash scripts/run-tests.sh $(ARGS)

# exact re-execution of the whole default profile against the committed results/metrics.json and dvc.lock (~9 min
# on 2 idle cores; make test re-runs one of its trainings against the committed bits)
test-exact: setup
	$(BIN)/python -m pytest -q --timeout=5400 -m exact

# the fast tier: no training, no daemons
test-fast: setup
	$(BIN)/python -m pytest -q --durations=10 -m "not slow and not docker and not slurm and not core_install and not exact"

bench: setup
	$(BIN)/python benchmarks/run_benchmark.py

# Regenerate requirements.lock (keeps the pins, adds what pyproject.toml newly asks for; --upgrade: newest).
lock:
	python3.11 scripts/lock_requirements.py

clean:
	rm -rf .pytest_cache .ruff_cache .mypy_cache .hypothesis
