# Hive developer tasks. Every target works on a fresh machine (Debian 12, Python 3.11):
# the first one that needs the virtual environment creates it.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
DEVSTACK_ARGS ?=

.DEFAULT_GOAL := test
.PHONY: install test lint bench devstack clean distclean

install: $(STAMP)

# The interpreter is an order-only prerequisite: an existing venv is reused, a
# missing one is created. The stamp is redone only when pyproject.toml changes.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

# pytest's own exit status is the target's: 1 for failures, 5 when nothing was collected.
test: install
	$(BIN)/pytest tests -q $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install
	@found=0; \
	for script in bench/[!_]*.py; do \
		[ -e "$$script" ] || continue; \
		found=1; \
		echo "==> $$script"; \
		$(BIN)/python "$$script" || exit $$?; \
	done; \
	if [ $$found -eq 0 ]; then echo "no benchmarks in bench/: nothing to run"; fi

devstack: install
	$(BIN)/hivectl devstack $(DEVSTACK_ARGS)

# Build outputs and caches; the virtual environment stays (see distclean).
clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
