#!/usr/bin/env bash
# Run the default (fast) test suite; installs the CPU environment into .venv first if needed.
# Extra arguments go to pytest, e.g. `bash scripts/run_tests.sh -m slow`. The test files are spread over
# CROPI_TEST_WORKERS pytest-xdist workers (default: the cores, at most 4), a file's tests on one worker (its module
# fixtures are built once); `-n 0` runs them in this process.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
CORES="$(nproc)"
exec "$ROOT/.venv/bin/python" -m pytest -n "${CROPI_TEST_WORKERS:-$(( CORES < 4 ? CORES : 4 ))}" --dist loadfile "$@"
