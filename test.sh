#!/usr/bin/env bash
# Runs the test suite from a clean checkout: creates .venv, installs requirements-dev.txt,
# runs pytest. Extra arguments go to pytest (e.g. ./test.sh -k pool).
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
status=0
.venv/bin/python -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "test.sh: pytest collected no tests; treating that as a failure" >&2
  exit 1
fi
exit "$status"
