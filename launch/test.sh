#!/usr/bin/env bash
# Create .venv, install ganjax with its test extras, run the test suite (extra args go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e ".[test]"
exec .venv/bin/python -m pytest -q "$@"
