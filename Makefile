# The two set-up commands of the README:  `make run`  and  `make test`.
# Both create .venv on first use and (re)install only when pyproject.toml changed.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# Worker processes of `make test` (pytest-xdist), each with its own embedded PostgreSQL and
# Kafka; modules that build an expensive module fixture stay on one worker (xdist_group).
# PYTEST_WORKERS=0 runs everything in this process.
PYTEST_WORKERS ?= 4
XDIST = $(if $(filter 0,$(PYTEST_WORKERS)),-n 0,-n $(PYTEST_WORKERS) --dist loadgroup --no-loadscope-reorder)

.PHONY: run test install install-dev lint-imports schemas clean-infra bench docs-img

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## make run: start the embedded servers and run the main job end to end, then print a summary.
run: $(VENV)/.installed
	$(BIN)/awet run

## make test: the whole test suite (slow cases included) against real embedded servers.
test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

# Refresh the Dagster UI screenshots in docs/img (tests write theirs to a temporary directory).
docs-img: $(VENV)/.installed-dev
	AWET_DOCS_IMG=$(CURDIR)/docs/img $(BIN)/python -m pytest -q -p no:randomly tests/test_dagster_ui.py

lint-imports: $(VENV)/.installed-dev
	$(BIN)/lint-imports

schemas: $(VENV)/.installed
	$(BIN)/python -m awet_dagster.contracts.schema_export

bench: $(VENV)/.installed-dev
	for b in benchmarks/*.py; do case $$b in */_*) continue;; esac; $(BIN)/python $$b --quick || exit 1; done

clean-infra: $(VENV)/.installed
	$(BIN)/awet infra down
