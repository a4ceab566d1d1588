#!/usr/bin/env bash
# Shared body of the run_cropi_*.sh recipes (sourced, not run): prepare the data if missing, collect the offline
# rollouts with vLLM if missing, check everything (scripts/preflight.py), then launch CROPI on verl; extra
# arguments are hydra overrides, passed last to both.
# The caller sets MODEL, NAME and MAX_RESPONSE. Optional environment:
#   DATA_DIR (data/math), ROLLOUT_DIR (rollouts/$NAME), NGPUS (8), NNODES (1), TP (2), PYTHON (python),
#   TOKENS_PER_GPU (3 x (1024 + MAX_RESPONSE)),
#   STRATEGY (cropi; or a baseline: random pass_rate learnability influence_oneshot influence_max full),
#   DRY_RUN=1 prints every command instead of running it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python}"
DATA_DIR="${DATA_DIR:-data/math}"
ROLLOUT_DIR="${ROLLOUT_DIR:-rollouts/$NAME}"
NGPUS="${NGPUS:-8}"
NNODES="${NNODES:-1}"
TP="${TP:-2}"
STRATEGY="${STRATEGY:-cropi}"
TOKENS_PER_GPU="${TOKENS_PER_GPU:-$(( 3 * (1024 + MAX_RESPONSE) ))}"   # dynamic-batch token budget per GPU
TARGETED=(gsm8k math500)   # validation sets scored against (the paper's "targeted" GSM8K + MATH)

run() {
  if [[ -n "${DRY_RUN:-}" ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}

if [[ ! -f "$DATA_DIR/train.parquet" ]]; then
  run "$PYTHON" scripts/prepare_data.py --out "$DATA_DIR" --train gsm8k math deepscaler \
    --eval gsm8k:test math500 aime24 amc23 gaokao2023en olympiadbench
fi

collect() {  # split, responses per prompt
  if [[ ! -f "$ROLLOUT_DIR/$1/rollouts.parquet" ]]; then
    run "$PYTHON" scripts/collect_rollouts.py --backend vllm --model "$MODEL" --input "$DATA_DIR/$1.parquet" \
      --out "$ROLLOUT_DIR/$1" --n "$2" --temperature 0.5 --max-new-tokens "$MAX_RESPONSE" --tensor-parallel-size "$TP"
  fi
}
collect train 8
for v in "${TARGETED[@]}"; do collect "$v" 32; done

VAL_ROLLOUTS="$(printf "%s:'$ROLLOUT_DIR/%s/rollouts.parquet'," "${TARGETED[0]}" "${TARGETED[0]}" "${TARGETED[1]}" "${TARGETED[1]}")"
VAL_FILES="[$(printf "'$DATA_DIR/%s.parquet'," gsm8k math500 aime24 amc23 gaokao2023en olympiadbench | sed 's/,$//')]"

OVERRIDES=(
  data.train_files="$DATA_DIR/train.parquet"
  data.val_files="$VAL_FILES"
  data.train_batch_size=128
  data.max_prompt_length=1024
  data.max_response_length="$MAX_RESPONSE"
  data.filter_overlong_prompts=true
  actor_rollout_ref.model.path="$MODEL"
  actor_rollout_ref.actor.optim.lr=1e-6
  actor_rollout_ref.actor.ppo_mini_batch_size=128
  actor_rollout_ref.actor.use_dynamic_bsz=true
  actor_rollout_ref.actor.ppo_max_token_len_per_gpu="$TOKENS_PER_GPU"
  actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=true
  actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu="$TOKENS_PER_GPU"
  actor_rollout_ref.ref.log_prob_use_dynamic_bsz=true
  actor_rollout_ref.ref.log_prob_max_token_len_per_gpu="$TOKENS_PER_GPU"
  actor_rollout_ref.actor.use_kl_loss=true
  actor_rollout_ref.actor.kl_loss_coef=0.001
  actor_rollout_ref.actor.kl_loss_type=low_var_kl
  actor_rollout_ref.actor.entropy_coeff=0.001
  "actor_rollout_ref.actor.checkpoint.save_contents=[model,optimizer,extra,hf_model]"
  actor_rollout_ref.rollout.name=vllm
  actor_rollout_ref.rollout.n=8
  actor_rollout_ref.rollout.tensor_model_parallel_size="$TP"
  actor_rollout_ref.rollout.gpu_memory_utilization=0.6
  trainer.n_gpus_per_node="$NGPUS"
  trainer.nnodes="$NNODES"
  trainer.experiment_name="${NAME}_${STRATEGY}"
  trainer.save_freq=50
  trainer.test_freq=50
  "trainer.logger=[console]"
  cropi.strategy="$STRATEGY"
  cropi.num_stages=10
  cropi.steps_per_stage=100
  cropi.train_rollouts="$ROLLOUT_DIR/train/rollouts.parquet"
  "cropi.val_rollouts={${VAL_ROLLOUTS%,}}"
)
run "$PYTHON" scripts/preflight.py "${OVERRIDES[@]}" "$@"
run "$PYTHON" -m cropi_verl.trainer.main "${OVERRIDES[@]}" "$@"
