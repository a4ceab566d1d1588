#!/usr/bin/env bash
# The paper's baselines with the same settings as a CROPI recipe:
#   bash recipes/run_baseline.sh STRATEGY [RECIPE] [hydra overrides]
# STRATEGY: random | pass_rate | learnability | influence_oneshot | influence_max | full
# RECIPE: qwen1.5b (default) | qwen7b | r1distill1.5b. Each baseline gets its own experiment name and checkpoints.
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: bash recipes/run_baseline.sh STRATEGY [qwen1.5b|qwen7b|r1distill1.5b] [hydra overrides]" >&2
  exit 2
fi
STRATEGY="$1"; shift
RECIPE="qwen1.5b"
if [[ $# -gt 0 && "$1" != *=* ]]; then RECIPE="$1"; shift; fi
SCRIPT="$(dirname "${BASH_SOURCE[0]}")/run_cropi_${RECIPE}.sh"
if [[ ! -f "$SCRIPT" ]]; then
  echo "error: no recipe $SCRIPT (expected qwen1.5b, qwen7b or r1distill1.5b)" >&2
  exit 2
fi
export STRATEGY
exec bash "$SCRIPT" "$@"
