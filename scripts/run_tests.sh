#!/usr/bin/env bash
# Run the default (fast) test suite; installs the CPU environment into .venv first if needed.
# Extra arguments go to pytest, e.g. `bash scripts/run_tests.sh -m slow`. The test files are spread over
# CROPI_TEST_WORKERS pytest-xdist workers (default: one more than the cores, at most 4: many tests wait on a
# subprocess or Ray starting, so a third worker on 2 cores cut the suite from 603 s to 491 s, docs/results.md section
# 9), a file's tests on one worker (its module fixtures are built once), the heaviest files first (tests/conftest.py's
# HEAVIEST_FILES); `-n 0` runs them in this process.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
CORES="$(nproc)"
exec "$ROOT/.venv/bin/python" -m pytest -n "${CROPI_TEST_WORKERS:-$(( CORES < 3 ? CORES + 1 : 4 ))}" --dist loadfile --no-loadscope-reorder "$@"
