#!/usr/bin/env bash
# Install everything the tests need, then run them (the README's test command).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh -r requirements-dev.txt
# The public reference implementation (PhotoMaker V1, Apache-2.0) is used by the tests as an
# oracle only: unpacked next to the tests, never imported as `photomaker`.
if [ ! -d .oracle/photomaker ]; then
  pip install -q --no-deps --target .oracle "photomakerv==0.1.0"
fi
# Two worker processes (pytest-xdist), one torch thread each (tests/conftest.py): both cores of
# a 2-core machine. Each test file runs whole on one worker, so a file's module fixtures (a
# compiled UNet, a running app) are built once. PYTEST_WORKERS=0 runs in this process.
python -m pytest -q -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
