#!/bin/bash
# Device set-up: a .venv for the repo copy, from carried wheels (no network there).
set -e
python3 -m venv .venv
.venv/bin/pip install -q --no-index --find-links .devwheels .devwheels/*.whl
.venv/bin/pip install -q --no-index --no-build-isolation --no-deps -e .
