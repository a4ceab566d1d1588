#!/usr/bin/env bash
# CROPI on DeepSeek-R1-Distill-Qwen-1.5B (max response 8192). Usage and resume as in run_cropi_qwen1.5b.sh.
RECIPE_MODEL="deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
RECIPE_NAME="r1distill1.5b"
RECIPE_MAX_RESPONSE="8192"
# shellcheck source=recipes/_cropi_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_cropi_common.sh"
