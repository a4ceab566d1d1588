#!/usr/bin/env bash
# The demo on a real pretrained instruct model, SmolLM2-135M-Instruct (preset=smollm2): CROPI, full data, random and
# pass_rate on the embedded task, 2 stages x 5 GRPO steps each, on CPU (2-3 hours on 2 cores; the demo prints
# its estimate before it starts). Installs .venv and fetches the model on first use; resumable: rerun the same
# command and finished methods are reused, an interrupted one resumes from its last checkpoint.
# Extra arguments are hydra overrides, e.g. `run_name=mine` or `"methods=[cropi,full]"`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
"$ROOT/.venv/bin/python" scripts/fetch_model.py smollm2-135m
exec "$ROOT/.venv/bin/python" -m cropi_verl.local.main preset=smollm2 run_name=smollm2_cpu "$@"
