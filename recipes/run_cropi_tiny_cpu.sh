#!/usr/bin/env bash
# The main job on its embedded default: the tiny CPU CROPI demo. Installs .venv on first use.
# Extra arguments are hydra overrides of configs/tiny_cpu.yaml, e.g. `preset=quick` or `run_name=mine`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m cropi_verl.local.main "$@"
