#!/usr/bin/env python
"""GPU check of the influence pass against the plan (``cropi_verl/plan.py``); one JSON file with everything.

Parts, each in its own subprocess under its own time budget (a failure, an OOM or a timeout is recorded in the JSON
and the next part runs; the JSON is rewritten after every part):

- ``pytest`` (with ``--pytest``): ``python -m pytest -m gpu`` on the test files that mark tests ``gpu``;
- one part per model: ``popi_features`` as the influence worker runs it on a GPU (``resolve_worker_precision``'s
  auto: bfloat16 weights, HF gradient checkpointing with ``use_reentrant=False``; ``cropi.popi`` and
  ``cropi.projection`` from configs/cropi_trainer.yaml) on a random-init Qwen2.5-1.5B and Qwen2.5-7B, built on the
  device in its dtype. Each prompt has K = 8 distinct responses of T tokens (1.5B: 2,048; 7B: 4,096, the recipes'
  max) after a 256-token prompt, rewards half 0 half 1, behaviour log-probs -ln V (rho ~ 1 at random init). One
  warm-up prompt, then up to 3 timed ones (fewer when the part's budget runs short), one ``popi_features`` call each.

Measured per model: s/prompt (median of the timed prompts); peak memory ``torch.cuda.max_memory_allocated``
(reset once the model is built, so its weights count) against the plan's influence-worker figure; MFU = the plan's
FLOPs per prompt ((6 + 2 recompute) P K (prompt + T)) / s per prompt / 989e12 (H100/H200 dense bf16 peak).

``--model FOLDER`` (repeatable) adds a part per local HF model folder: random-init weights of the architecture its
``config.json`` describes (only that file is read, so a folder of a config alone will do), at the 1.5B part's
shapes (the tiny one's with ``--tiny``). A folder without a readable ``config.json`` is refused in one line before
any part runs.

``--tiny`` runs the same logic on a tiny Qwen2 in fp32 with few tokens (on the CPU when there is no GPU), to prove
the script end to end. Output: ``--out``, default ``$OUT/gpu_check.json`` (``./gpu_check.json`` without ``OUT``).

    python scripts/gpu_pass_check.py [--tiny] [--pytest] [--model FOLDER ...] [--total-budget-s 420] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "cropi_trainer.yaml"

MODELS = {  # HF Qwen2Config values
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                         max_position_embeddings=32768, pad_token_id=151643),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False,
                       max_position_embeddings=32768, pad_token_id=151643),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=256, tie_word_embeddings=True, max_position_embeddings=256,
                 pad_token_id=0),
}


@dataclass(frozen=True)
class Shape:
    """Responses per prompt, response and prompt tokens, worker dtype and checkpointing, timed prompts, seconds."""

    responses: int
    response_tokens: int
    prompt_tokens: int
    dtype: str
    checkpointing: bool
    timed: int
    budget_s: float


SHAPES = {
    "qwen2.5-1.5b": Shape(8, 2048, 256, "bfloat16", True, 3, 150),
    "qwen2.5-7b": Shape(8, 4096, 256, "bfloat16", True, 3, 200),
    "tiny": Shape(8, 24, 8, "float32", True, 3, 60),
}
PYTEST_BUDGET_S = 90


def recipe_settings(tiny: bool) -> tuple[dict, dict]:
    """``cropi.popi`` and ``cropi.projection`` of configs/cropi_trainer.yaml (tiny: k = 256)."""
    import yaml

    cropi = yaml.safe_load(CONFIG.read_text())["cropi"]
    projection = dict(cropi["projection"], k=256) if tiny else dict(cropi["projection"])
    return dict(cropi["popi"]), projection


def model_config(name: str):
    """The transformers config of a part: a Qwen2Config of ``MODELS[name]``, else the ``config.json`` of the folder
    ``name``."""
    from transformers import AutoConfig, Qwen2Config

    return Qwen2Config(**MODELS[name]) if name in MODELS else AutoConfig.from_pretrained(name)


def config_problem(folder: str) -> str | None:
    """Why ``--model folder`` cannot be a part (no readable ``config.json`` of a causal LM); None when it can."""
    try:
        model_config(folder)
    except (OSError, ValueError) as e:
        why = " ".join(str(e).split())
        return f"--model {folder}: expected a local HF model folder with a config.json ({type(e).__name__}: {why})"[:600]
    return None


def shape_of(name: str, tiny: bool) -> Shape:
    return SHAPES[name] if name in SHAPES else SHAPES["tiny" if tiny else "qwen2.5-1.5b"]


def pad_id_of(config) -> int:
    return config.pad_token_id if isinstance(config.pad_token_id, int) else 0  # masked either way


def build_model(name: str, shape: Shape, device: str):
    """A random-init model of ``name``'s config built on ``device`` in the worker's dtype, with the worker's gradient
    checkpointing."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(model_config(name), dtype=getattr(torch, shape.dtype))
    if shape.checkpointing:  # as InfluenceWorker.init_model
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def synthetic_prompts(name: str, shape: Shape, n: int) -> list:
    """``n`` prompts of K distinct random responses, rewards 0/1 alternating, behaviour log-probs -ln V."""
    from cropi_verl.influence.gradients import PromptRollouts

    vocab, rng = model_config(name).vocab_size, random.Random(0)
    out = []
    for i in range(n):
        resp = [[rng.randrange(vocab) for _ in range(shape.response_tokens)] for _ in range(shape.responses)]
        out.append(PromptRollouts(i, [rng.randrange(vocab) for _ in range(shape.prompt_tokens)], resp,
                                  [[-math.log(vocab)] * len(r) for r in resp],
                                  [float(k % 2) for k in range(shape.responses)]))
    return out


def pass_plan(name: str, shape: Shape, popi: dict, k: int, gpu_bytes: int | None):
    """The plan at the measured shapes (prompt 256 tokens, the recipes' actor settings otherwise)."""
    from cropi_verl import plan
    from cropi_verl.influence.gradients import PopiConfig

    recipe = plan.RecipeShape(max_prompt_length=shape.prompt_tokens, max_response_length=shape.response_tokens,
                              responses_per_prompt=shape.responses,
                              ppo_max_token_len_per_gpu=3 * (1024 + shape.response_tokens))
    worker = plan.WorkerSettings(shape.dtype, shape.checkpointing, popi["micro_batch_tokens"],
                                 popi["logit_chunk_tokens"], popi["stream_buffer"], k, PopiConfig(**popi).prompt_once)
    gpu = plan.GpuSpec() if gpu_bytes is None else plan.GpuSpec(memory_bytes=gpu_bytes)
    shape_ = plan.ModelShape.from_config(MODELS[name]) if name in MODELS else plan.model_shape(name)
    return plan.plan(shape_, recipe, worker, gpu)


def run_pass(name: str, tiny: bool, budget_s: float) -> dict:
    """One model's part (see the module docstring); stops timing prompts when the next would pass 80% of
    ``budget_s``."""
    import torch
    import transformers

    from cropi_verl.influence import cuda_kernel
    from cropi_verl.influence.gradients import PopiConfig, parameter_offsets, popi_features
    from cropi_verl.influence.projection import make_projector
    from cropi_verl.plan import format_plan

    shape, start = shape_of(name, tiny), time.perf_counter()
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    popi, projection = recipe_settings(tiny)
    model = build_model(name, shape, device)
    _, dim = parameter_offsets(model)
    projector = make_projector(dim=dim, **projection)
    cfg = PopiConfig(**popi)
    prompts = synthetic_prompts(name, shape, 1 + shape.timed)
    p = pass_plan(name, shape, popi, projector.k, torch.cuda.get_device_properties(0).total_memory if cuda else None)
    out = {"model": name, "shape": asdict(shape), "device": device, "torch": torch.__version__,
           "transformers": transformers.__version__, "gpu": torch.cuda.get_device_name() if cuda else None,
           "params": dim, "plan_params": p.params,
           "popi": popi, "projection": projection, "attn_implementation": model.config._attn_implementation,
           "cuda_kernel": bool(cuda and cuda_kernel.load(torch.cuda.current_device()) is not None),
           "build_s": round(time.perf_counter() - start, 2), "plan": format_plan(p)}
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        out["weights_bytes"] = torch.cuda.memory_allocated()
    times, checks = [], []
    try:
        for i, pr in enumerate(prompts):
            if i > 1 and time.perf_counter() - start + 1.5 * times[-1] > 0.8 * budget_s:
                break  # the next prompt would not fit the part's budget
            t0 = time.perf_counter()
            res = popi_features(model, [pr], projector, pad_id_of(model.config), cfg)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            checks.append(res.prompt_ids == [pr.prompt_id] and bool(res.features.abs().sum() > 0))
    except Exception as e:  # an OOM, a kernel error: recorded beside what was measured before it
        out["error"] = f"{type(e).__name__}: {e}"[:2000]
    s = statistics.median(times[1:]) if len(times) > 1 else None
    out.update(warmup_s=round(times[0], 3) if times else None, prompt_s=[round(t, 3) for t in times[1:]],
               s_per_prompt=s, features_ok=bool(checks) and all(checks), plan_s_per_prompt=p.seconds_per_prompt,
               plan_flops_per_prompt=p.flops_per_prompt, plan_worker_bytes=p.memory["influence worker"])
    if cuda:
        peak = torch.cuda.max_memory_allocated()
        out.update(peak_bytes=peak, peak_over_plan=peak / p.memory["influence worker"],
                   mfu=p.flops_per_prompt / s / p.gpu.peak_flops if s else None)
    out["part_s"] = round(time.perf_counter() - start, 2)
    return out


def gpu_test_files() -> list[str]:
    """tests/*.py that mark tests ``gpu`` (the others are never collected, so verl-importing files stay out)."""
    return sorted(str(f.relative_to(ROOT)) for f in (ROOT / "tests").glob("test_*.py")
                  if "pytest.mark.gpu" in f.read_text())


def run_pytest(timeout: float) -> dict:
    """``pytest -m gpu`` on ``gpu_test_files``: exit code, counts from the summary line, the output's tail."""
    files = gpu_test_files()
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
           "--continue-on-collection-errors", *files]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return {"files": files, "error": f"timed out after {timeout:.0f} s", "output_tail": _tail(e.stdout)}
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", proc.stdout)}
    return {"files": files, "rc": proc.returncode, "counts": counts, "output_tail": _tail(proc.stdout + proc.stderr)}


def _tail(text: str | bytes | None, n: int = 4000) -> str:
    text = text.decode(errors="replace") if isinstance(text, bytes) else (text or "")
    return text[-n:]


def run_part(name: str, tiny: bool, timeout: float) -> dict:
    """``name``'s pass in a subprocess (``--part``) under ``timeout`` seconds; its JSON, or what went wrong."""
    with tempfile.TemporaryDirectory() as tmp:
        part_out = Path(tmp) / "part.json"
        cmd = [sys.executable, __file__, "--part", name, "--part-out", str(part_out), "--part-budget-s", str(timeout),
               *(["--tiny"] if tiny else [])]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            return {"error": f"timed out after {timeout:.0f} s", "output_tail": _tail(e.stderr)}
        if proc.returncode != 0 or not part_out.is_file():
            return {"error": f"exit code {proc.returncode}", "output_tail": _tail(proc.stdout + proc.stderr)}
        return json.loads(part_out.read_text())


def environment() -> dict:
    """Host, Python and ``nvidia-smi``'s GPUs (no CUDA context in this process: the parts own the device)."""
    env = {"host": platform.node(), "python": platform.python_version()}
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        env["gpus"] = smi.stdout.strip().splitlines()
    except (OSError, subprocess.TimeoutExpired) as e:
        env["gpus"] = repr(e)
    return env


def part_ok(part: dict) -> bool:
    """No error, pytest's exit code 0, the features of every prompt non-zero."""
    return "error" not in part and part.get("rc", 0) == 0 and part.get("features_ok", True)


def write(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                 epilog="example: python scripts/gpu_pass_check.py --tiny --out /tmp/gpu_check.json "
                                        "(the logic on a tiny model; bash scripts/gpu_check.sh runs it on a GPU)")
    ap.add_argument("--tiny", action="store_true", help="a tiny fp32 Qwen2 with few tokens (CPU without a GPU)")
    ap.add_argument("--pytest", action="store_true", help="first run the tests marked gpu")
    ap.add_argument("--total-budget-s", type=float, default=420, help="seconds for all parts together")
    ap.add_argument("--setup-log", type=Path, help="a log to embed (gpu_check.sh's dependency install)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "gpu_check.json",
                    help="the JSON report ($OUT/gpu_check.json, ./gpu_check.json without OUT)")
    ap.add_argument("--model", action="append", default=[], metavar="FOLDER",
                    help="also a part of random-init weights shaped by this folder's config.json (repeatable)")
    ap.add_argument("--part", help="internal: run this model's part (a name of MODELS or a folder) in this process")
    ap.add_argument("--part-out", type=Path, help="internal: where --part writes its JSON")
    ap.add_argument("--part-budget-s", type=float, default=60, help="internal: --part's time budget")
    args = ap.parse_args(argv)
    problems = [p for p in map(config_problem, args.model) if p]
    if problems:
        print(f"error: {problems[0]}", file=sys.stderr)
        return 2
    if args.part:
        write(run_pass(args.part, args.tiny, args.part_budget_s), args.part_out)
        return 0
    start = time.perf_counter()
    report = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "environment": environment(), "parts": {}}
    if args.setup_log and args.setup_log.is_file():
        report["setup"] = _tail(args.setup_log.read_text())
    parts = [("pytest", PYTEST_BUDGET_S)] if args.pytest else []
    parts += [(m, shape_of(m, args.tiny).budget_s)
              for m in (["tiny"] if args.tiny else ["qwen2.5-1.5b", "qwen2.5-7b"]) + args.model]
    for name, budget in parts:
        left = args.total_budget_s - (time.perf_counter() - start)
        if left < 10:
            report["parts"][name] = {"error": "skipped: the total budget is spent"}
        else:
            timeout = min(budget, left)
            report["parts"][name] = run_pytest(timeout) if name == "pytest" else run_part(name, args.tiny, timeout)
        report["total_s"] = round(time.perf_counter() - start, 1)
        write(report, args.out)
    report["ok"] = all(part_ok(p) for p in report["parts"].values())
    write(report, args.out)
    print(json.dumps(report, indent=1, default=str))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
