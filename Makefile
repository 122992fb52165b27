# Keel: `make run` serves the demo; `make test` runs lint, the migrations check and the whole suite.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python

# Tests always run against real PostgreSQL and Redis on loopback. Override to isolate parallel runs.
KEEL_TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/keel
KEEL_TEST_REDIS_URL ?= redis://127.0.0.1:6379/15
TEST_ENV := DEBUG=1 DATABASE_URL=$(KEEL_TEST_DATABASE_URL) REDIS_URL=$(KEEL_TEST_REDIS_URL)
PYTEST_ARGS ?=

.PHONY: run test lint migrations-check services bench bench-quick clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.run-deps: requirements.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev-deps: requirements.txt requirements-dev.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@ $(VENV)/.run-deps

run: $(VENV)/.run-deps
	bash scripts/run.sh

services:
	bash scripts/ensure-services.sh "$(KEEL_TEST_DATABASE_URL)" "$(KEEL_TEST_REDIS_URL)"

lint: $(VENV)/.dev-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(TEST_ENV) $(VENV)/bin/mypy apps config

migrations-check: $(VENV)/.dev-deps
	$(TEST_ENV) $(PY) manage.py makemigrations --check --dry-run

test: $(VENV)/.dev-deps services lint migrations-check
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS)

# Benchmarks (bench/, docs/benchmarks.md): Keel against a direct provider call, on this machine.
bench: $(VENV)/.dev-deps services
	$(PY) -m bench

bench-quick: $(VENV)/.dev-deps services
	$(PY) -m bench --quick

clean:
	rm -rf var/keel.sqlite3* var/static
