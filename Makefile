# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PORTRAIT_HOME ?= $(CURDIR)/.portrait
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test test-fast ui bench clean

install: $(STAMP)

# torch is installed first and pinned: an unpinned torch pulls several GB of CUDA wheels.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/portrait import demo
	$(BIN)/portrait run --train --train-epochs 3

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

ui: install
	$(BIN)/portrait ui

bench: install
	$(BIN)/python -m bench.ingest
	$(BIN)/python -m bench.encode
	$(BIN)/python -m bench.profiles
	$(BIN)/python -m bench.freshness

clean:
	rm -rf $(VENV) .portrait
