# Hive developer tasks. Every target works on a fresh machine (Debian 12, Python 3.11):
# the first one that needs the virtual environment creates it.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
LOCK_ARGS ?=
PYTEST_ARGS ?=
DEVSTACK_ARGS ?=

.DEFAULT_GOAL := test
.PHONY: install lock lock-check test lint bench devstack clean distclean

install: $(STAMP)

# The interpreter is an order-only prerequisite: an existing venv is reused, a
# missing one is created. The stamp is redone when the lock or pyproject.toml changes.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Everything comes from $(LOCK), hash-checked: first the locked pip and setuptools (the
# venv's own pip is whatever the interpreter bundles), then the whole set, then Hive
# itself. --no-build-isolation makes every build (Hive, and nkeys, which ships no wheel)
# use the locked setuptools, so nothing unpinned is ever fetched.
$(STAMP): $(LOCK) pyproject.toml | $(BIN)/python
	awk '/^[^ #]/ { keep = ($$1 ~ /^(pip|setuptools)==/) } keep' $(LOCK) > $(VENV)/bootstrap.txt
	$(BIN)/python -m pip install --require-hashes -r $(VENV)/bootstrap.txt
	$(BIN)/python -m pip install --require-hashes --no-build-isolation -r $(LOCK)
	$(BIN)/python -m pip install --no-deps --no-build-isolation -e .
	@# Hive's own bytecode now, so hivectl starts fast even where .pyc files are not written.
	$(BIN)/python -m compileall -q hive hivectl requester nodeagent
	touch $@

# $(LOCK) is refreshed only here, on purpose. uv resolves once for every Python >= 3.11
# on every platform (--universal) and writes every file hash of each pin into a plain
# requirements file that pip checks; pip-tools resolves for the interpreter and platform
# it runs on only, so its lock can miss what another Python or platform needs. uv is a
# single static wheel, itself pinned in the lock (pyproject's `tooling` group). Pins
# pyproject.toml still allows are kept; `make lock LOCK_ARGS=--upgrade` takes the newest.
# It resolves into a copy, so an unchanged lock keeps its date (and the venv its stamp).
lock: install
	cp $(LOCK) $(VENV)/lock.txt
	$(BIN)/uv pip compile pyproject.toml --extra dev --group pyproject.toml:tooling \
		--universal --python-version 3.11 --generate-hashes --no-config --quiet \
		--custom-compile-command 'make lock' $(LOCK_ARGS) --output-file $(VENV)/lock.txt
	@if cmp -s $(VENV)/lock.txt $(LOCK); then echo "$(LOCK): unchanged"; \
	else cp $(VENV)/lock.txt $(LOCK) && echo "$(LOCK): updated (git diff $(LOCK))"; fi

# Fetches, hash-checked, what the lock installs on Linux x86_64 and aarch64 under
# Python 3.11 and 3.12 (glibc up to Debian 12's 2.36), and names any package that would
# be built from source there; one whose build needs more than setuptools fails here.
LOCK_TARGETS := 3.11-x86_64 3.11-aarch64 3.12-x86_64 3.12-aarch64
lock-check: install
	@for target in $(LOCK_TARGETS); do \
		py=$${target%%-*}; arch=$${target#*-}; dir=$$(mktemp -d); \
		echo "==> Python $$py, Linux $$arch"; \
		platforms=$$(for v in $$(seq 17 36); do echo "--platform manylinux_2_$${v}_$$arch"; done); \
		$(BIN)/python -m pip download -q --no-deps --require-hashes --no-build-isolation \
			--implementation cp --python-version $$py $$platforms \
			--dest $$dir -r $(LOCK) || { rm -rf $$dir; exit 1; }; \
		for file in $$dir/*; do \
			case $$file in *.whl) ;; *) echo "    built from source: $${file##*/}" ;; esac; \
		done; \
		rm -rf $$dir; \
	done

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
