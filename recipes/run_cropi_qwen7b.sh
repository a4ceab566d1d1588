#!/usr/bin/env bash
# CROPI on Qwen2.5-7B-Instruct (max response 4096). Usage and resume as in run_cropi_qwen1.5b.sh.
RECIPE_MODEL="Qwen/Qwen2.5-7B-Instruct"
RECIPE_NAME="qwen7b"
RECIPE_MAX_RESPONSE="4096"
# shellcheck source=recipes/_cropi_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_cropi_common.sh"
