# The two commands of the README: `make run` and `make test`. Both set up what they need first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=
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

test: setup-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)
