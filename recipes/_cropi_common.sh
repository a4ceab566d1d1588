#!/usr/bin/env bash
# Shared body of the run_cropi_*.sh recipes (sourced, not run): prepare the data if missing, collect the offline
# rollouts if missing, check everything (scripts/preflight.py), then launch CROPI on verl; extra arguments are
# hydra overrides, passed last to both.
# The caller sets MODEL, NAME and MAX_RESPONSE. Optional environment:
#   DATA_DIR (data/math), ROLLOUT_DIR (rollouts/$NAME), NNODES (1), TP (2), PYTHON (python),
#   NGPUS (8): GPUs per node, for training (trainer.n_gpus_per_node) and for collection (NGPUS / TP vLLM engines
#     of TP GPUs each); set it rather than a trainer.n_gpus_per_node override,
#   TOKENS_PER_GPU (3 x (1024 + MAX_RESPONSE)),
#   STRATEGY (cropi; or a baseline: random pass_rate learnability influence_oneshot influence_max full),
#   TARGETED (heldout): the validation sets scored against for selection. heldout: gsm8k_heldout (GSM8K train
#     prompts removed from the pool) and math_heldout (MATH test minus MATH500), disjoint from every evaluated
#     prompt; paper: the paper's choice, the evaluated GSM8K test and MATH500 themselves. Both use the same pool
#     (without the GSM8K held-out prompts), so switching reuses the data and the pool's rollouts,
#   VAL_PROMPTS (400): prompts per targeted set with rollouts; the influence pass scores against at most
#     cropi.max_val_prompts (100) of those with a non-zero advantage (preflight prints how many each set has),
#   KEEP_CKPTS (2): trainer.max_actor_ckpt_to_keep (a 1.5B checkpoint is ~20 GiB; preflight prints the disk plan),
#   ROLLOUT_BACKEND (vllm; or hf: transformers generate, for CPU tests), RAW_DIR (read the raw datasets from local
#     files, prepare_data.py --raw-dir, instead of the HF hub),
#   DRY_RUN=1 prints every command instead of running it,
#   CROPI_STOP_BEFORE_TRAIN=1 runs every step before the trainer launch, then prints the launch instead.
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
TARGETED="${TARGETED:-heldout}"
VAL_PROMPTS="${VAL_PROMPTS:-400}"
KEEP_CKPTS="${KEEP_CKPTS:-2}"
ROLLOUT_BACKEND="${ROLLOUT_BACKEND:-vllm}"
TOKENS_PER_GPU="${TOKENS_PER_GPU:-$(( 3 * (1024 + MAX_RESPONSE) ))}"   # dynamic-batch token budget per GPU
EVAL=(gsm8k:test math500 aime24 amc23 gaokao2023en olympiadbench)      # accuracy is reported on these
EVAL_SETS=("${EVAL[@]/:/_}")                                           # prepare_data writes <name>[_<split>].parquet
HELDOUT=("gsm8k:train=$VAL_PROMPTS" "math:test=$VAL_PROMPTS")          # prepare_data --heldout, written as:
HELDOUT_SETS=(gsm8k_heldout math_heldout)
case "$TARGETED" in
  heldout) TARGETED_SETS=("${HELDOUT_SETS[@]}") ;;
  paper) TARGETED_SETS=(gsm8k_test math500) ;;
  *) echo "error: TARGETED=$TARGETED: expected heldout or paper" >&2; exit 2 ;;
esac
case "$ROLLOUT_BACKEND" in
  vllm)
    if (( NGPUS % TP )); then echo "error: NGPUS=$NGPUS is not a multiple of TP=$TP" >&2; exit 2; fi
    BACKEND_ARGS=(--tensor-parallel-size "$TP" --data-parallel-size "$(( NGPUS / TP ))" --shard-size 1024) ;;
  hf) BACKEND_ARGS=() ;;
  *) echo "error: ROLLOUT_BACKEND=$ROLLOUT_BACKEND: expected vllm or hf" >&2; exit 2 ;;
esac

run() {
  if [[ -n "${DRY_RUN:-}" ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}

for f in train "${EVAL_SETS[@]}" "${HELDOUT_SETS[@]}"; do
  if [[ ! -f "$DATA_DIR/$f.parquet" ]]; then
    run "$PYTHON" scripts/prepare_data.py --out "$DATA_DIR" --train gsm8k math deepscaler --eval "${EVAL[@]}" \
      --heldout "${HELDOUT[@]}" ${RAW_DIR:+--raw-dir "$RAW_DIR"}
    break
  fi
done

# --logprob-dtype must match cropi.workers.dtype (auto = bfloat16 on GPU): rho = 1 at beta's weights (preflight checks)
collect() {  # set name, responses per prompt, extra collect_rollouts.py arguments
  if [[ ! -f "$ROLLOUT_DIR/$1/rollouts.parquet" ]]; then
    run "$PYTHON" scripts/collect_rollouts.py --backend "$ROLLOUT_BACKEND" --model "$MODEL" \
      --input "$DATA_DIR/$1.parquet" --out "$ROLLOUT_DIR/$1" --n "$2" --temperature 0.5 \
      --max-new-tokens "$MAX_RESPONSE" --logprob-dtype bfloat16 "${BACKEND_ARGS[@]}" "${@:3}"
  fi
}
collect train 8
for v in "${TARGETED_SETS[@]}"; do collect "$v" 32 --max-prompts "$VAL_PROMPTS"; done

VAL_ROLLOUTS=""
for v in "${TARGETED_SETS[@]}"; do VAL_ROLLOUTS+="$v:'$ROLLOUT_DIR/$v/rollouts.parquet',"; done
VAL_FILES="[$(printf "'$DATA_DIR/%s.parquet'," "${EVAL_SETS[@]}" | sed 's/,$//')]"

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
  trainer.max_actor_ckpt_to_keep="$KEEP_CKPTS"
  trainer.test_freq=50
  "trainer.logger=[console]"
  cropi.strategy="$STRATEGY"
  cropi.num_stages=10
  cropi.steps_per_stage=100
  cropi.train_rollouts="$ROLLOUT_DIR/train/rollouts.parquet"
  "cropi.val_rollouts={${VAL_ROLLOUTS%,}}"
)
run "$PYTHON" scripts/preflight.py "${OVERRIDES[@]}" "$@"
if [[ -n "${CROPI_STOP_BEFORE_TRAIN:-}" ]]; then
  echo "CROPI_STOP_BEFORE_TRAIN is set: not launching the trainer:"
  DRY_RUN=1 run "$PYTHON" -m cropi_verl.trainer.main "${OVERRIDES[@]}" "$@"
else
  run "$PYTHON" -m cropi_verl.trainer.main "${OVERRIDES[@]}" "$@"
fi
