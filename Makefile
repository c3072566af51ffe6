# The same few verbs for people and CI.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

WHEEL := .wheel

.PHONY: install wheel run test test-fast lint bench bench-smoke

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# The wheel users deploy, built from the checkout and installed (not editable) in an environment
# of its own: the system tests run its `recall-transcribe`, not the checkout's.
wheel: install
	rm -rf $(WHEEL) build
	$(BIN)/pip wheel -q --no-deps -w $(WHEEL)/dist .
	rm -rf build
	$(PYTHON) -m venv $(WHEEL)/venv
	$(WHEEL)/venv/bin/pip install -q --disable-pip-version-check $(WHEEL)/dist/*.whl

run: install
	$(BIN)/recall-transcribe up

# The suite on TEST_PROCESSES processes (pytest-xdist): the system tests mostly wait on their
# processes, so more than the cores; the timing-sensitive ones share one (xdist_group "timing").
TEST_PROCESSES ?= 4

test: wheel
	RECALL_TRANSCRIBE_BIN=$(CURDIR)/$(WHEEL)/venv/bin/recall-transcribe $(BIN)/pytest \
		-n $(TEST_PROCESSES) --dist loadgroup --durations=25

test-fast: install  # the unit and Redis tiers: the loop to live in (under a minute)
	$(BIN)/pytest -m "not system" -q --hypothesis-profile fast -n $(TEST_PROCESSES) --dist loadgroup

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install
	$(BIN)/python -m bench

bench-smoke: install
	$(BIN)/python -m bench --smoke --out $(or $(TMPDIR),/tmp)/recall-bench-smoke.md
