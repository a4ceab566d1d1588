#!/usr/bin/env bash
# The embedded task on verl's real trainer on the CPU: the tiny policy, the demo's data (configs/verl_cpu/tiny.yaml
# over configs/cropi_trainer.yaml, with the CPU device keys of configs/device/cpu.yaml). The tests' kill/resume and
# full-vs-plain-verl runs use it; to check the GPU recipe itself on the CPU, run
# `DEVICE=cpu bash recipes/run_cropi_qwen1.5b.sh` instead.
#   bash recipes/run_cropi_tiny_verl_cpu.sh [hydra overrides]
# Installs .venv on first use. The same command resumes (trainer.resume_mode=auto). Environment:
#   OUT (outputs/verl_cpu): data, rollouts, checkpoints; PREPARE_ARGS: overrides of the demo config (tiny_cpu.yaml)
#   for the data, the policy and the offline rollouts (default: preset=quick); VERL_MAIN (cropi_verl.trainer.main):
#   verl.trainer.main_ppo runs plain verl GRPO on the same settings (add trainer.total_training_steps=9).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
OUT="${OUT:-outputs/verl_cpu}"
read -r -a PREPARE <<< "${PREPARE_ARGS:-preset=quick}"
POLICY="$("$PY" -m cropi_verl.verl_cpu.prepare "output_dir=$OUT" "${PREPARE[@]}" | tail -n 1)"

# shellcheck source=recipes/_cpu_env.sh
source "$ROOT/recipes/_cpu_env.sh"
exec "$PY" -m "${VERL_MAIN:-cropi_verl.trainer.main}" --config-path "$ROOT/configs" --config-name cropi_trainer \
  +device=cpu +verl_cpu=tiny \
  actor_rollout_ref.model.path="$POLICY" \
  data.train_files="$OUT/data/train.parquet" \
  "data.val_files=[$OUT/data/val_add.parquet,$OUT/data/val_sub.parquet,$OUT/data/val_mixed.parquet]" \
  cropi.train_rollouts="$OUT/rollouts/train/rollouts.parquet" \
  "cropi.val_rollouts={val_add:$OUT/rollouts/val_add/rollouts.parquet,val_sub:$OUT/rollouts/val_sub/rollouts.parquet}" \
  trainer.default_local_dir="$OUT/checkpoints" \
  "$@"
