#!/usr/bin/env bash
# Shared body of the run_cropi_*.sh recipes (sourced, not run): prepare the data if missing, collect the offline
# rollouts if missing, check everything (scripts/preflight.py), then launch CROPI on verl; extra arguments are
# hydra overrides, passed last to both.
# The caller sets RECIPE_MODEL, RECIPE_NAME and RECIPE_MAX_RESPONSE (the defaults of MODEL, NAME, MAX_RESPONSE).
# Optional environment (every value is checked before any step runs):
#   DEVICE (gpu): gpu, or cpu: the same recipe and config on verl's real trainer on the CPU (configs/device/cpu.yaml:
#     CPU platform, HF rollout replica; recipes/_cpu_env.sh) at a CPU scale (CPU_SCALE below, MAX_PROMPT 128,
#     MAX_RESPONSE 32, VAL_PROMPTS 32, NGPUS 1, TP 1, the hf collection), on raw datasets made from the embedded task
#     (cropi_verl/verl_cpu/recipe_inputs.py, into RAW_DIR; CPU_POOL (300) pool prompts, CPU_VAL (64) prompts per
#     validation split of the task) and a tiny policy warmed up on the paper's prompts (MODEL; not built when MODEL
#     is given, e.g. MODEL=smollm2-135m); raw files, data and rollouts under OUT (outputs/$NAME; NAME: <recipe>_cpu).
#     Installs .venv unless PYTHON is set (in a dry run too: it prints the CPU inputs' path),
#   MODEL, NAME ([A-Za-z0-9._-]), MAX_RESPONSE, MAX_PROMPT (1024): the policy, the run's name, token limits,
#   DATA_DIR (data/math), ROLLOUT_DIR (rollouts/$NAME), NNODES (1), TP (2), PYTHON (python),
#   NGPUS (8): GPUs per node, for training (trainer.n_gpus_per_node) and for collection (NGPUS / TP vLLM engines
#     of TP GPUs each); a trainer.n_gpus_per_node=N override sets it too (and trainer.nnodes=N sets NNODES): a
#     different NGPUS / NNODES in the environment is refused,
#   TOKENS_PER_GPU (3 x (MAX_PROMPT + MAX_RESPONSE)),
#   STRATEGY (cropi; or a baseline: random pass_rate learnability influence_oneshot influence_max full),
#   TARGETED (heldout): the validation sets scored against for selection. heldout: gsm8k_heldout (GSM8K train
#     prompts removed from the pool) and math_heldout (MATH test minus MATH500), disjoint from every evaluated
#     prompt; paper: the paper's choice, the evaluated GSM8K test and MATH500 themselves. Both use the same pool
#     (without the GSM8K held-out prompts), so switching reuses the data and the pool's rollouts,
#   VAL_PROMPTS (400): prompts per targeted set with rollouts; the influence pass scores against at most
#     cropi.max_val_prompts (100) of those with a non-zero advantage (preflight prints how many each set has),
#   KEEP_CKPTS (2): trainer.max_actor_ckpt_to_keep (a 1.5B checkpoint is ~20 GiB; preflight prints the disk plan),
#   POOL_RESPONSES (8, the paper's K; at least 2): offline responses per pool prompt, a cost lever (collection and
#     pass x K/8; docs/results.md section 19 measures its selection against K = 8),
#   VAL_RESPONSES (32; at least 2): offline responses per targeted-set prompt,
#   ROLLOUT_BACKEND (vllm; or hf: transformers generate), ADAPTIVE_FIRST (unset: off; 2 .. POOL_RESPONSES): an
#     adaptive pool collection, that many responses per prompt first and the others only where their rewards
#     differ (collect_rollouts.py --adaptive-first; scripts/adaptive_collection.py measures what it misses),
#   RAW_DIR (read the raw datasets from local files, prepare_data.py --raw-dir, instead of the HF hub),
#   DRY_RUN=1 checks the settings and prints each step's command, labelled, instead of running it (steps whose
#     output exists are marked skipped); preflight runs for real when every input it reads exists,
#   CROPI_STOP_BEFORE_TRAIN=1 runs every step before the trainer launch, then prints the launch instead.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

fail() { echo "error: $*" >&2; exit 2; }
DEVICE="${DEVICE:-gpu}"
# CPU_SCALE: the hydra overrides DEVICE=cpu adds (before the command line's own), scale keys only
CPU_SCALE=(data.train_batch_size=8 actor_rollout_ref.actor.ppo_mini_batch_size=8 cropi.num_stages=2
           cropi.steps_per_stage=3 trainer.save_freq=3 trainer.test_freq=3)
case "$DEVICE" in
  gpu)
    NAME="${NAME:-$RECIPE_NAME}"
    DEFAULTS=(MAX_PROMPT=1024 "MAX_RESPONSE=$RECIPE_MAX_RESPONSE" "MODEL=$RECIPE_MODEL" DATA_DIR=data/math
              "ROLLOUT_DIR=rollouts/$NAME" TP=2 VAL_PROMPTS=400 ROLLOUT_BACKEND=vllm PYTHON=python)
    GPUS_PER_NODE=8 SCALE=() DEVICE_ARGS=() LOGPROB_DTYPE=bfloat16 ;;  # the workers' dtype (cropi.workers.dtype auto: bf16 on GPU)
  cpu)
    NAME="${NAME:-${RECIPE_NAME}_cpu}"
    OUT="${OUT:-outputs/$NAME}"
    DEFAULTS=(MAX_PROMPT=128 MAX_RESPONSE=32 "DATA_DIR=$OUT/data" "ROLLOUT_DIR=$OUT/rollouts" TP=1 VAL_PROMPTS=32
              ROLLOUT_BACKEND=hf)
    GPUS_PER_NODE=1 SCALE=("${CPU_SCALE[@]}") DEVICE_ARGS=(+device=cpu) LOGPROB_DTYPE=float32 ;;  # float32: auto on the CPU
  *) fail "DEVICE=$DEVICE: expected gpu or cpu" ;;
esac
if [[ ! "$NAME" =~ ^[A-Za-z0-9._-]+$ ]]; then
  fail "NAME=$NAME: expected letters, digits, '.', '_' or '-' (it names directories and the experiment)"
fi
for pair in "${DEFAULTS[@]}"; do  # an unset (or empty) variable takes the device's default
  var="${pair%%=*}"
  if [[ -z "${!var:-}" ]]; then printf -v "$var" '%s' "${pair#*=}"; fi
done
STRATEGY="${STRATEGY:-cropi}"
STRATEGIES=(cropi random pass_rate learnability influence_oneshot influence_max full)  # cropi.strategy's choices
TARGETED="${TARGETED:-heldout}"
KEEP_CKPTS="${KEEP_CKPTS:-2}"

positive() {  # VAR...: each a positive integer (no sign, no leading zero)
  local var
  for var in "$@"; do
    if [[ ! "${!var}" =~ ^[1-9][0-9]*$ ]]; then fail "$var=${!var}: expected a positive integer"; fi
  done
}
POOL_RESPONSES="${POOL_RESPONSES:-8}"
VAL_RESPONSES="${VAL_RESPONSES:-32}"
positive TP MAX_PROMPT MAX_RESPONSE VAL_PROMPTS KEEP_CKPTS POOL_RESPONSES VAL_RESPONSES
for var in POOL_RESPONSES VAL_RESPONSES; do
  if (( ${!var} < 2 )); then
    fail "$var=${!var}: expected an integer >= 2 (a prompt's responses must be able to differ)"
  fi
done
if [[ "$DEVICE" == cpu && -z "${RAW_DIR:-}" ]]; then  # the sizes of the raw datasets the recipe makes
  CPU_POOL="${CPU_POOL:-300}" CPU_VAL="${CPU_VAL:-64}"
  positive CPU_POOL CPU_VAL
else
  for var in CPU_POOL CPU_VAL; do
    if [[ -n "${!var:-}" ]]; then
      fail "$var=${!var}: sizes the raw datasets DEVICE=cpu makes; expected it unset with DEVICE=$DEVICE${RAW_DIR:+ and RAW_DIR=$RAW_DIR}"
    fi
  done
fi
if [[ -n "${ADAPTIVE_FIRST:-}" ]]; then
  positive ADAPTIVE_FIRST
  if (( ADAPTIVE_FIRST < 2 || ADAPTIVE_FIRST > POOL_RESPONSES )); then
    fail "ADAPTIVE_FIRST=$ADAPTIVE_FIRST: expected 2 .. $POOL_RESPONSES (a first draw of the $POOL_RESPONSES" \
      "responses per pool prompt)"
  fi
fi
TOKENS_PER_GPU="${TOKENS_PER_GPU:-$(( 3 * (MAX_PROMPT + MAX_RESPONSE) ))}"   # dynamic-batch token budget per GPU
positive TOKENS_PER_GPU

gpu_count() {  # VAR KEY DEFAULT OVERRIDES...: VAR from the override KEY=N if given (VAR set to another value as well is
               # refused), else VAR as set, else DEFAULT; a positive integer
  local var="$1" key="$2" default="$3" arg given=""
  shift 3
  for arg in "$@"; do
    if [[ "$arg" == "$key="* || "$arg" == "++$key="* ]]; then given="${arg#*=}"; fi
  done
  if [[ -n "$given" && -n "${!var:-}" && "${!var}" != "$given" ]]; then
    fail "$var=${!var} conflicts with the override $key=$given: give the count once"
  fi
  printf -v "$var" '%s' "${given:-${!var:-$default}}"
  positive "$var"
}
gpu_count NGPUS trainer.n_gpus_per_node "$GPUS_PER_NODE" "$@"
gpu_count NNODES trainer.nnodes 1 "$@"
if [[ " ${STRATEGIES[*]} " != *" $STRATEGY "* ]]; then fail "STRATEGY=$STRATEGY: expected one of ${STRATEGIES[*]}"; fi
EVAL=(gsm8k:test math500 aime24 amc23 gaokao2023en olympiadbench)      # accuracy is reported on these
EVAL_SETS=("${EVAL[@]/:/_}")                                           # prepare_data writes <name>[_<split>].parquet
HELDOUT=("gsm8k:train=$VAL_PROMPTS" "math:test=$VAL_PROMPTS")          # prepare_data --heldout, written as:
HELDOUT_SETS=(gsm8k_heldout math_heldout)
case "$TARGETED" in
  heldout) TARGETED_SETS=("${HELDOUT_SETS[@]}") ;;
  paper) TARGETED_SETS=(gsm8k_test math500) ;;
  *) fail "TARGETED=$TARGETED: expected heldout or paper" ;;
esac
case "$ROLLOUT_BACKEND" in
  vllm)
    if (( NGPUS % TP )); then fail "NGPUS=$NGPUS is not a multiple of TP=$TP"; fi
    BACKEND_ARGS=(--tensor-parallel-size "$TP" --data-parallel-size "$(( NGPUS / TP ))" --shard-size 1024) ;;
  hf) BACKEND_ARGS=() ;;
  *) fail "ROLLOUT_BACKEND=$ROLLOUT_BACKEND: expected vllm or hf" ;;
esac

hq() {  # a value as a hydra quoted string, whatever it holds (quotes and the backslashes before them escaped)
  local v="$1"
  v="$(printf '%s' "$v" | sed -E "s/(\\\\+)('|\$)/\\1\\1\\2/g; s/'/\\\\'/g")"
  printf "'%s'" "$v"
}
show() { printf '%q ' "$@"; echo; }
# A step runs in the background and the script waits on it, so that a SIGTERM to the script (a scheduler stopping the
# job) reaches the step at once, which then ends with its own one line; Ctrl-C reaches it from the terminal.
CHILD=""
trap 'if [[ -n "$CHILD" ]]; then kill -TERM "$CHILD" 2>/dev/null || true; wait "$CHILD" || true; fi; exit 143' TERM
run() {  # LABEL COMMAND...: the label as a comment, then the command: run, or printed in a dry run
  echo "# $1"
  shift
  if [[ -n "${DRY_RUN:-}" ]]; then show "$@"; return; fi
  "$@" &
  CHILD=$!
  wait "$CHILD"
  CHILD=""
}
PENDING=()  # the steps that will write an input of preflight

if [[ "$DEVICE" == cpu ]]; then
  if [[ -z "${PYTHON:-}" ]]; then bash "$ROOT/scripts/setup_env.sh"; PYTHON="$ROOT/.venv/bin/python"; fi
  if [[ -z "${RAW_DIR:-}" || -z "${MODEL:-}" ]]; then
    INPUTS=("$PYTHON" -m cropi_verl.verl_cpu.recipe_inputs)
    WHAT=()
    if [[ -z "${RAW_DIR:-}" ]]; then
      RAW_DIR="$OUT/raw"
      WHAT+=("raw datasets from the embedded task")
      INPUTS+=(--raw-dir "$RAW_DIR" --pool "$CPU_POOL" --val "$CPU_VAL")
    fi
    if [[ -n "${MODEL:-}" ]]; then INPUTS+=(--raw-only); else WHAT+=("the tiny policy (cached)"); fi
    PENDING+=("the CPU inputs")
    WHAT_TEXT="$(printf '%s, ' "${WHAT[@]}")"
    run "step 0/4 the CPU inputs: ${WHAT_TEXT%, }" "${INPUTS[@]}"
    MODEL="${MODEL:-$("$PYTHON" -m cropi_verl.verl_cpu.recipe_inputs --where)}"
  fi
fi

MISSING=()
for f in train "${EVAL_SETS[@]}" "${HELDOUT_SETS[@]}"; do
  if [[ ! -f "$DATA_DIR/$f.parquet" ]]; then MISSING+=("$f.parquet"); fi
done
if (( ${#MISSING[@]} )); then
  PENDING+=("data")
  run "step 1/4 prepare the data ($DATA_DIR lacks ${MISSING[*]})" "$PYTHON" scripts/prepare_data.py --out "$DATA_DIR" \
    --train gsm8k math deepscaler --eval "${EVAL[@]}" --heldout "${HELDOUT[@]}" ${RAW_DIR:+--raw-dir "$RAW_DIR"}
else
  echo "# step 1/4 prepare the data: skipped, every file exists under $DATA_DIR"
fi

# --logprob-dtype is the workers' dtype (cropi.workers.dtype auto): rho = 1 at beta's weights (preflight checks)
collect() {  # set name, responses per prompt, extra collect_rollouts.py arguments
  if [[ -f "$ROLLOUT_DIR/$1/rollouts.parquet" ]]; then
    echo "# step 2/4 collect the rollouts of $1: skipped, $ROLLOUT_DIR/$1/rollouts.parquet exists"
    return
  fi
  PENDING+=("rollouts of $1")
  run "step 2/4 collect the rollouts of $1" "$PYTHON" scripts/collect_rollouts.py --backend "$ROLLOUT_BACKEND" \
    --model "$MODEL" --input "$DATA_DIR/$1.parquet" --out "$ROLLOUT_DIR/$1" --n "$2" --temperature 0.5 \
    --max-new-tokens "$MAX_RESPONSE" --max-prompt-tokens "$MAX_PROMPT" --logprob-dtype "$LOGPROB_DTYPE" \
    "${BACKEND_ARGS[@]}" "${@:3}"
}
collect train "$POOL_RESPONSES" ${ADAPTIVE_FIRST:+--adaptive-first "$ADAPTIVE_FIRST"}
for v in "${TARGETED_SETS[@]}"; do collect "$v" "$VAL_RESPONSES" --max-prompts "$VAL_PROMPTS"; done

VAL_ROLLOUTS=""
for v in "${TARGETED_SETS[@]}"; do VAL_ROLLOUTS+="$v:$(hq "$ROLLOUT_DIR/$v/rollouts.parquet"),"; done
VAL_FILES=""
for v in "${EVAL_SETS[@]}"; do VAL_FILES+="$(hq "$DATA_DIR/$v.parquet"),"; done

OVERRIDES=(
  "${DEVICE_ARGS[@]}"
  data.train_files="$(hq "$DATA_DIR/train.parquet")"
  data.val_files="[${VAL_FILES%,}]"
  data.train_batch_size=128
  data.max_prompt_length="$MAX_PROMPT"
  data.max_response_length="$MAX_RESPONSE"
  data.filter_overlong_prompts=true
  actor_rollout_ref.model.path="$(hq "$MODEL")"
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
  cropi.train_rollouts="$(hq "$ROLLOUT_DIR/train/rollouts.parquet")"
  "cropi.val_rollouts={${VAL_ROLLOUTS%,}}"
  "${SCALE[@]}"
)
PREFLIGHT=("$PYTHON" scripts/preflight.py "${OVERRIDES[@]}" "$@")
if [[ -z "${DRY_RUN:-}" ]]; then
  run "step 3/4 preflight" "${PREFLIGHT[@]}"
elif (( ${#PENDING[@]} )); then
  PENDING_TEXT="$(printf '%s, ' "${PENDING[@]}")"
  run "step 3/4 preflight: not run in a dry run, the steps above write its inputs (${PENDING_TEXT%, })" \
    "${PREFLIGHT[@]}"
else
  run "step 3/4 preflight: run in the dry run too, every input exists" "${PREFLIGHT[@]}"
  "${PREFLIGHT[@]}"
fi
TRAIN=("$PYTHON" -m cropi_verl.trainer.main "${OVERRIDES[@]}" "$@")
if [[ "$DEVICE" == cpu ]]; then
  # shellcheck source=recipes/_cpu_env.sh
  source "$ROOT/recipes/_cpu_env.sh"
fi
if [[ -n "${CROPI_STOP_BEFORE_TRAIN:-}" ]]; then
  echo "# step 4/4 train"
  echo "CROPI_STOP_BEFORE_TRAIN is set: not launching the trainer:"
  show "${TRAIN[@]}"
else
  run "step 4/4 train (the same command resumes)" "${TRAIN[@]}"
fi
