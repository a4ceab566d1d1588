#!/usr/bin/env bash
# One-machine GPU check (an H100/H200 with torch; no verl, ray or vLLM needed), under 8 minutes in all:
#   1. installs what the influence pass and the tests need, only where missing or too old (transformers, tokenizers,
#      tqdm, numpy, pandas, pyarrow, pydantic, pyyaml, pytest; pyproject.toml's bounds), never touching torch;
#   2. runs scripts/gpu_pass_check.py --pytest: the tests marked gpu, then the influence pass on random-init
#      Qwen2.5-1.5B and -7B against cropi_verl/plan.py; each part is recorded, errors included, in
#      $OUT/gpu_check.json (./gpu_check.json without OUT), which is also printed;
#   3. scripts/bench_gradients.py --lengths realistic at Qwen2.5-1.5B (cap 2,048) and -7B (cap 4,096) shapes: rows
#      padded, packed and packed with the prompt once, one JSON line each appended to
#      $OUT/bench_gradients_realistic.jsonl (and printed);
#   4. scripts/bench_generation.py at Qwen2.5-1.5B's shape: the collection's generated tokens/s on one GPU, with
#      vLLM where it is installed, HF generate otherwise (labelled in its JSON line, $OUT/bench_generation.jsonl):
#      the figure scripts/plan.py assumes (gen_tokens_per_gpu_s).
#   bash scripts/gpu_check.sh [more gpu_pass_check.py arguments]
# Environment: PYTHON (python); CROPI_WHEELS=DIR installs from local wheels only (pip --no-index --find-links DIR),
# for a machine without network access.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
PYTHON="${PYTHON:-python}"
TOTAL_S=470        # the whole script's budget (seconds)
INSTALL_S=90       # pip's share of it
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
SETUP_LOG="$(mktemp)"
trap 'rm -f "$SETUP_LOG"' EXIT

REQUIREMENTS=("transformers>=5.5.3,<5.11,!=5.6.0" tokenizers tqdm "numpy>=2" pandas "pyarrow>=19" "pydantic>=2.6" pyyaml
              "pytest>=8")
mapfile -t MISSING < <("$PYTHON" - "${REQUIREMENTS[@]}" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
for spec in sys.argv[1:]:
    req = Requirement(spec)
    try:
        ok = req.specifier.contains(version(req.name), prereleases=True)
    except PackageNotFoundError:
        ok = False
    if not ok:
        print(spec)
EOF
)
if ((${#MISSING[@]})); then
  TORCH="$("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null)"
  PIP=("$PYTHON" -m pip install -q --disable-pip-version-check --timeout 20 --retries 1)
  [[ -n "${CROPI_WHEELS:-}" ]] && PIP+=(--no-index --find-links "$CROPI_WHEELS")
  [[ -n "$TORCH" ]] && PIP+=(-c /dev/stdin)   # torch pinned to the installed version
  echo "installing: ${MISSING[*]}" | tee -a "$SETUP_LOG"
  echo "torch==$TORCH" | timeout "$INSTALL_S" "${PIP[@]}" "${MISSING[@]}" >>"$SETUP_LOG" 2>&1 \
    || echo "pip install failed or timed out (exit $?); the parts that need the package record the error" \
      | tee -a "$SETUP_LOG"
else
  echo "all required packages present" >>"$SETUP_LOG"
fi

BENCH_S=130        # steps 3 and 4's share
GEN_S=45           # step 4's share of it
LEFT=$((TOTAL_S - BENCH_S - SECONDS))
timeout "$LEFT" "$PYTHON" scripts/gpu_pass_check.py --pytest --total-budget-s $((LEFT - 15)) \
  --setup-log "$SETUP_LOG" "$@"
STATUS=$?
json_line() {  # MODEL LINE: LINE if it is JSON; else (a traceback's or a timeout's last line) one JSON error line
  "$PYTHON" -c 'import json, sys; line = sys.argv[2]
try: print(json.dumps(json.loads(line)))
except ValueError: print(json.dumps({"model": sys.argv[1], "error": line or "no output (timed out?)"}))' "$1" "$2"
}
BENCH_OUT="${OUT:-.}/bench_gradients_realistic.jsonl"
SHAPES=("qwen2.5-1.5b 2048 8" "qwen2.5-7b 4096 4")
for i in "${!SHAPES[@]}"; do
  read -r model cap prompts <<< "${SHAPES[$i]}"
  SHARE=$(((TOTAL_S - GEN_S - SECONDS) / (${#SHAPES[@]} - i)))   # the time left, shared by the benches left
  (( SHARE > 20 )) || { echo "{\"model\": \"$model\", \"skipped\": \"no time left\"}" | tee -a "$BENCH_OUT"; continue; }
  LAST="$(timeout "$SHARE" "$PYTHON" scripts/bench_gradients.py --lengths realistic --device cuda --model "$model" \
    --cap "$cap" --prompts "$prompts" --repeats 1 --k 32768 2>&1 | tail -n 1)"
  json_line "$model" "$LAST" | tee -a "$BENCH_OUT"
done
GEN_LEFT=$((TOTAL_S - SECONDS))
if (( GEN_LEFT > 15 )); then
  GEN="$(timeout "$GEN_LEFT" "$PYTHON" scripts/bench_generation.py --model qwen2.5-1.5b --prompts 32 --n 8 \
    --new-tokens 256 2>&1 | tail -n 1)"
else
  GEN='{"skipped": "no time left"}'
fi
json_line qwen2.5-1.5b "$GEN" | tee -a "${OUT:-.}/bench_generation.jsonl"
exit "$STATUS"
