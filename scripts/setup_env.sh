#!/usr/bin/env bash
# Idempotent CPU environment bootstrap: creates .venv, installs torch==2.13.0 (CPU build) first,
# then this package with its [test] extra. A stamp keyed by pyproject.toml, the torch spec and this checkout (the
# editable install points here) makes reruns instant.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CROPI_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
TORCH_SPEC="${CROPI_TORCH_SPEC:-torch==2.13.0}"
STAMP="$VENV/.cropi-stamp"
WANT="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16) $TORCH_SPEC $ROOT"  # the editable install points at ROOT
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  exit 0
fi
echo "[setup_env] installing into $VENV (one-time, ~2-3 min)" >&2
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
"$VENV/bin/python" -m pip install -q -e "${ROOT}[test]"
echo "$WANT" > "$STAMP"
echo "[setup_env] done" >&2
