# The same few verbs for people and CI.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test test-fast lint bench bench-smoke

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/recall-transcribe up

test: install
	$(BIN)/pytest

test-fast: install  # the unit and Redis tiers: the loop to live in (about a minute)
	$(BIN)/pytest -m "not system" -q --hypothesis-profile fast

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install
	$(BIN)/python -m bench

bench-smoke: install
	$(BIN)/python -m bench --smoke --out $(or $(TMPDIR),/tmp)/recall-bench-smoke.md
