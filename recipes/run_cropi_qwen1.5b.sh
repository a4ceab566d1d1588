#!/usr/bin/env bash
# CROPI on Qwen2.5-1.5B-Instruct with the paper's settings (8 GPUs, 10 stages x 100 GRPO steps, 10% per stage).
#   bash recipes/run_cropi_qwen1.5b.sh [hydra overrides]      e.g. trainer.n_gpus_per_node=4 (collection too)
# The same command resumes (trainer.resume_mode=auto). DRY_RUN=1 checks and prints each step. DEVICE=cpu runs the
# same recipe and config on verl's trainer on the CPU, on local inputs (under 10 minutes on 2 cores). See _cropi_common.sh.
RECIPE_MODEL="Qwen/Qwen2.5-1.5B-Instruct"
RECIPE_NAME="qwen1.5b"
RECIPE_MAX_RESPONSE="2048"
# shellcheck source=recipes/_cropi_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_cropi_common.sh"
