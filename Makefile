# The two commands of the README: `make run` and `make test`. Both set up what they need first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=
# Processes for the tests that may run side by side: one per core.
TEST_WORKERS ?= auto
# The browser test drives Debian's Chromium; nothing downloads a browser of its own.
CHROMIUM := /usr/bin/chromium

.PHONY: run test setup setup-test

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "kbsite needs Python 3.11 or newer: make PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
	elif command -v sudo >/dev/null; then sudo apt-get install -y chromium; \
	else echo "The browser test needs Debian's chromium package: apt-get install chromium"; exit 1; fi

setup: $(VENV)/.installed

setup-test: $(VENV)/.installed-test $(CHROMIUM)

run: setup
	$(BIN)/python manage.py migrate --no-input
	$(BIN)/python manage.py bootstrap --url http://$(HOST):$(PORT)/
	$(BIN)/uvicorn kbsite.asgi:application --host $(HOST) --port $(PORT)

# Two parts: the independent tests in TEST_WORKERS processes at once (pytest-xdist), then the timed load
# tests and the drills alone (tests/conftest.py: --run-part); each prints its 30 slowest tests. Both
# parts always run. pytest exits 5 when PYTEST_ARGS leave a part no test: fine, unless both are empty.
test: setup-test
	@$(BIN)/python -m pytest --run-part=parallel -n $(TEST_WORKERS) --dist loadgroup --durations=30 $(PYTEST_ARGS); \
	parallel=$$?; \
	$(BIN)/python -m pytest --run-part=alone --durations=30 $(PYTEST_ARGS); \
	alone=$$?; \
	echo "make test: the parallel part exited $$parallel, the part run alone $$alone (0 passed, 5 no test chosen)"; \
	case $$parallel:$$alone in 0:0|0:5|5:0) exit 0 ;; 5:5) exit 5 ;; 0:*|5:*) exit $$alone ;; *) exit $$parallel ;; esac
