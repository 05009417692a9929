# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PORTRAIT_HOME ?= $(CURDIR)/.portrait
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install browser redis demo test test-fast ui screenshots bench clean

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

# The UI test drives the system's Chromium (Debian's `chromium` package, never a downloaded
# browser). Installing it needs root; without it the test fails and says how to install it.
browser:
	@test -n "$$PORTRAIT_CHROMIUM" || command -v chromium >/dev/null 2>&1 || \
	  (DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) || \
	  echo "Chromium is missing and could not be installed here: run 'sudo apt-get install -y chromium'"

# The Celery test starts its own broker from Debian's `redis-server` package, on loopback only.
redis:
	@command -v redis-server >/dev/null 2>&1 || \
	  (DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) || \
	  echo "redis-server is missing and could not be installed here: run 'sudo apt-get install -y redis-server'"

test: install browser redis
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

ui: install
	$(BIN)/portrait ui

# Re-takes docs/screenshots/*.png with the UI test.
screenshots: install browser
	PORTRAIT_SCREENSHOTS=docs/screenshots $(BIN)/python -m pytest -q tests/test_ui.py

# Every benchmark, then bench/results/README.md; the scale run is separate: python -m bench.scale
bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .portrait
