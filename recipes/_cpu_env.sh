#!/usr/bin/env bash
# Sourced by the recipes that run verl's trainer on the CPU (with `+device=cpu`, configs/device/cpu.yaml): verl
# imports cropi_verl.verl_cpu in every process it starts (the CPU platform, its patches and the hf rollout replica).
export VERL_PLATFORM=cpu VERL_USE_EXTERNAL_MODULES=cropi_verl.verl_cpu RAY_AUTH_MODE=disabled
CORES="$(nproc)"  # TransferQueue's threads (8 by default) are capped at the cores, with a warning per call
export TQ_NUM_THREADS="${TQ_NUM_THREADS:-$(( CORES < 8 ? CORES : 8 ))}"
