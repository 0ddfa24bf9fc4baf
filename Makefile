# hobs_jax: the two Quick-start commands (make demo, make test) and their helpers.
# Both bootstrap .venv with the pinned versions in requirements/constraints.txt and
# install Debian's dataset-fashion-mnist when it is missing.

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?= -n 2 --dist loadfile --no-loadscope-reorder --durations=25
# make test and test-fast compile at XLA's backend optimization level 0: the suite spends most
# of its time in XLA:CPU's compiler (cold cache on a clean clone), which -O0 cuts about in half;
# results agree with the default build to float rounding. make test-all, make demo, make parity
# and every CLI use XLA's defaults. TEST_XLA_FLAGS= (empty) runs make test at the defaults too.
TEST_XLA_FLAGS ?= --xla_backend_optimization_level=0
TEST_ENV = XLA_FLAGS="$${XLA_FLAGS:-} $(TEST_XLA_FLAGS)"
WORKDIR ?= workdir/quickstart

.PHONY: demo test test-fast test-all lint venv data lock parity reproduce clean help

help:
	@echo "make demo   - run the quickstart job on Fashion-MNIST (bootstraps .venv and the dataset)"
	@echo "make test   - run the test suite CI runs (goal < 15 min on 2 cores; 11 min of pytest on a fresh clone, see README) (bootstraps .venv and the dataset)"
	@echo "make test-fast - the logic tests on tiny models, < 3 min (the inner loop)"
	@echo "make test-all  - every test: the heavy variants and the fault sweep too (about an hour)"
	@echo "make lint   - ruff (lint, import order) and mypy over the sources (bootstraps .venv)"
	@echo "make parity - python -m parity --all in float32 and float64"
	@echo "make reproduce [QUICK=1] [ONLY=name,...] - regenerate docs/results and README's headline figures (QUICK: < 20 min on 2 CPUs; ONLY: just those catalog entries)"
	@echo "make lock   - rewrite requirements/constraints.txt from the current .venv"

venv: $(STAMP)

# Reinstall only when the dependency declaration or the lock changes.
$(STAMP): setup.cfg pyproject.toml requirements/constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); \
	  if [ "$$free" -lt 8 ]; then echo "warning: $$free GiB free here; the pinned venv (torch's CUDA build from PyPI) needs about 7 GiB"; fi
	$(PY) -m pip install -q --no-cache-dir -c requirements/constraints.txt -e '.[parity,test]'
	@touch $(STAMP)

data: $(FMNIST)

$(FMNIST):
	@echo "Fashion-MNIST missing: installing Debian package dataset-fashion-mnist"
	export DEBIAN_FRONTEND=noninteractive; \
	  $(SUDO) apt-get install -y -q dataset-fashion-mnist || \
	  { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist; }
	@test -f $(FMNIST)

# Tiers: tests/tiers.py.
test: venv data
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS) -m "not extended"

test-fast: venv data
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS) -m "not slow and not extended"

test-all: venv data
	$(PY) -m pytest $(PYTEST_ARGS) -m "extended or fault_sweep or not extended"

# Lint and type check; rules and scope live in pyproject.toml ([tool.ruff], [tool.mypy]).
LINT_PATHS := hobs_jax kernels parity tests benchmarks

lint: venv
	$(PY) -m ruff check $(LINT_PATHS)
	$(PY) -m mypy

demo: venv data
	$(PY) -m parity --model resnet50 resnet20
	$(PY) -m hobs_jax.macs
	$(PY) -m hobs_jax.main --config=configs/quickstart.py --workdir=$(WORKDIR)

parity: venv data
	$(PY) -m parity --all --dtype float32
	$(PY) -m parity --all --dtype float64

# QUICK=1: the quick tables and studies measured, every other table rebuilt from its run record.
# ONLY=name[,name...]: just those catalog entries (python -m hobs_jax.experiments.tables --list).
reproduce: venv data
	$(PY) -m hobs_jax.experiments.reproduce $(if $(QUICK),--quick,) $(if $(ONLY),--only $(ONLY),)

lock: venv
	{ head -3 requirements/constraints.txt; $(PY) -m pip freeze --exclude-editable | grep -v '^hobs'; } > requirements/constraints.tmp
	mv requirements/constraints.tmp requirements/constraints.txt

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
