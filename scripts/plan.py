#!/usr/bin/env python
"""The end-to-end cost of one paper-scale CROPI run on verl against full-data GRPO, in GPU hours: an estimate whose
every input is named with its source (a measurement of ours, a published figure, or an assumption).

    python scripts/plan.py [--model qwen2.5-1.5b|qwen2.5-7b|all] [--pool 54888] [--zero-share 0.5] ...

CROPI = offline collection (vLLM generation of K responses per pool prompt + beta's log-probs by one HF forward)
+ one influence pass per stage (POPI gradients of the pool prompts that are not zero-advantage, and of the
validation prompts; with ``--rescore candidates``, the passes after stage 0 compute only the candidates' share of the
pool's, ``CandidateConfig.scored_share``) + its GRPO steps; full data = its GRPO steps. The pass's FLOPs per prompt
are the plan's (``cropi_verl/plan.py``: 6 or 8 P T, checkpointing decided by the memory plan as
``cropi.workers.gradient_checkpointing=auto`` does), run at the MFU measured on an H100. Prints a table per model and
a final JSON line: collection hours, seconds per boundary pass, seconds per GRPO step, each side's hours, the pass's
share of CROPI's time, the wall-clock speed-up at the paper's step counts, and the step speed-up CROPI needs to break
even in wall-clock.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_pass_check import MODELS  # noqa: E402  (the Qwen2.5 configs, published on the HF hub)

from cropi_verl import plan  # noqa: E402
from cropi_verl.curriculum.settings import CandidateConfig  # noqa: E402
from cropi_verl.utils.cli import HelpFormatter, one_line_errors  # noqa: E402
from cropi_verl.utils.config_rules import AtLeastOne, Fraction, Positive, ShareOf, arg_type  # noqa: E402

# name -> (value per model, source): the inputs, each with where it comes from
MEASURED_MFU = 0.32  # docs/results.md §7: 0.30 s/prompt, Qwen2.5-1.5B, 8 x (256 + 1,024) tokens, bf16, one H100
INPUTS = {
    "n_gpus": ({"qwen2.5-1.5b": 8, "qwen2.5-7b": 8}, "published: the paper's setup (8 GPUs)"),
    "pool": ({"qwen2.5-1.5b": 54_888, "qwen2.5-7b": 54_888},
             "published: GSM8K train 7,473 + MATH train 7,500 + DeepScaleR 40,315, minus 400 held out"),
    "responses": ({"qwen2.5-1.5b": 8, "qwen2.5-7b": 8}, "published: the paper's K = 8 offline responses"),
    "prompt_tokens": ({"qwen2.5-1.5b": 256, "qwen2.5-7b": 256}, "assumption: a chat-templated math prompt"),
    "mean_response": ({"qwen2.5-1.5b": 1024, "qwen2.5-7b": 1536},
                      "assumption: mean response tokens at T = 0.5 (caps 2,048 / 4,096)"),
    "zero_share": ({"qwen2.5-1.5b": 0.5, "qwen2.5-7b": 0.5},
                   "assumption: share of pool prompts whose 8 rewards are equal (no gradient)"),
    "val_prompts": ({"qwen2.5-1.5b": 200, "qwen2.5-7b": 200}, "published: 100 per targeted set, two sets"),
    "stages": ({"qwen2.5-1.5b": 10, "qwen2.5-7b": 10}, "assumption: the recipes' 10 stages (the paper does not say)"),
    "fraction": ({"qwen2.5-1.5b": 0.1, "qwen2.5-7b": 0.1},
                 "published: the paper selects a tenth of the pool per stage"),
    "mfu": ({"qwen2.5-1.5b": MEASURED_MFU, "qwen2.5-7b": MEASURED_MFU},
            "measured: the pass's MFU on an H100 (docs/results.md section 7)"),
    "gen_tokens_per_gpu_s": ({"qwen2.5-1.5b": 12_000, "qwen2.5-7b": 4_000},
                             "assumption: vLLM decode throughput per GPU (batched, bf16, H100)"),
    "step_seconds": ({"qwen2.5-1.5b": 45.0, "qwen2.5-7b": 105.0},
                     "published: GRESO's verl GRPO step times (arXiv 2506.02177), as issue 27's model reads them"),
    "cropi_steps": ({"qwen2.5-1.5b": 650, "qwen2.5-7b": 650},
                    "published: the paper's 650 steps to full data's level"),
    "full_steps": ({"qwen2.5-1.5b": 1750, "qwen2.5-7b": 1750}, "published: full data reaches it at 1,750 steps"),
}
INPUT_RULES = {"fraction": Fraction, "zero_share": ShareOf, "mfu": Fraction}  # the others: a number > 0
MAX_RESPONSE = {"qwen2.5-1.5b": 2048, "qwen2.5-7b": 4096}  # the recipes' caps


def estimate(name: str, values: dict, candidates: CandidateConfig | None = None) -> dict:
    """Every figure of one model's run (module docstring); ``candidates``: ``--rescore candidates``'s settings."""
    v = values
    shape = plan.ModelShape.from_config(MODELS[name])
    p_count, gpus = shape.params(), v["n_gpus"]
    recipe = plan.RecipeShape(gpus, v["prompt_tokens"], v["mean_response"], v["responses"],
                              ppo_max_token_len_per_gpu=3 * (1024 + MAX_RESPONSE[name]))
    worker = plan.WorkerSettings(gradient_checkpointing=False)
    gpu = plan.GpuSpec(mfu=v["mfu"])
    checkpointing = not plan.plan(shape, replace(recipe, max_response_length=MAX_RESPONSE[name]), worker,
                                  gpu).boundary_fits()
    tokens = plan.tokens_per_prompt(recipe, share_prompt=False)
    per_prompt = plan.pass_flops(shape, tokens, checkpointing) / (gpu.peak_flops * v["mfu"])
    pool_s = v["pool"] * (1 - v["zero_share"]) * per_prompt / gpus
    val_s = v["val_prompts"] * per_prompt / gpus
    pass_s = pool_s + val_s
    share = 1.0 if candidates is None else candidates.scored_share(v["fraction"], 1 - v["zero_share"])
    passes_s = pass_s + (v["stages"] - 1) * (val_s + share * pool_s)
    generated = v["pool"] * v["responses"] * v["mean_response"]
    collect_s = (generated / (v["gen_tokens_per_gpu_s"] * gpus)
                 + 2 * p_count * v["pool"] * tokens / (gpu.peak_flops * v["mfu"] * gpus))  # beta's log-probs
    steps_cropi_s, full_s = v["cropi_steps"] * v["step_seconds"], v["full_steps"] * v["step_seconds"]
    cropi_s = collect_s + passes_s + steps_cropi_s
    overhead = collect_s + passes_s
    return {"model": name, "params": p_count, "checkpointing": checkpointing, "pass_seconds_per_prompt": per_prompt,
            "collection_hours": collect_s / 3600, "pass_seconds": pass_s, "rescored_share": share,
            "passes_hours": passes_s / 3600,
            "step_seconds": v["step_seconds"], "cropi_steps_hours": steps_cropi_s / 3600,
            "cropi_hours": cropi_s / 3600, "full_hours": full_s / 3600, "pass_share": passes_s / cropi_s,
            "wallclock_speedup": full_s / cropi_s,
            "break_even_step_speedup": full_s / (full_s - overhead) if full_s > overhead else None}


@one_line_errors(resumes=False)
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--model", choices=[*[m for m in MODELS if m != "tiny"], "all"], default="all")
    for key, (per_model, source) in INPUTS.items():
        ap.add_argument(f"--{key.replace('_', '-')}", type=arg_type(INPUT_RULES.get(key, Positive)), default=None,
                        help=f"{source} (default: {', '.join(f'{m} {x}' for m, x in per_model.items())})")
    ap.add_argument("--rescore", choices=["true", "candidates"], default="candidates",
                    help="candidates: cropi.rescore=candidates (the GPU recipe's default); true: every pass scores "
                         "the whole pool (the paper)")
    ap.add_argument("--multiple", type=arg_type(AtLeastOne), default=CandidateConfig.multiple,
                    help="cropi.candidates.multiple")
    ap.add_argument("--explore", type=arg_type(ShareOf), default=CandidateConfig.explore,
                    help="cropi.candidates.explore")
    args = ap.parse_args(argv)
    candidates = CandidateConfig(args.multiple, args.explore) if args.rescore == "candidates" else None
    names = [m for m in MODELS if m != "tiny"] if args.model == "all" else [args.model]
    rows = []
    print("inputs:")
    for key, (per_model, source) in INPUTS.items():
        given = getattr(args, key)
        shown = given if given is not None else ", ".join(f"{m} {per_model[m]}" for m in names)
        print(f"  {key:<22} {shown}  [{source if given is None else 'this command line'}]")
    given = (args.rescore, args.multiple, args.explore) != (ap.get_default("rescore"), ap.get_default("multiple"),
                                                             ap.get_default("explore"))
    print(f"  {'rescore':<22} {args.rescore}" + (f" (multiple {args.multiple}, explore {args.explore})" if candidates
                                                else "")
          + f"  [{'this command line' if given else 'assumption: configs/cropi_trainer.yaml, cropi.rescore'}]")
    for name in names:
        values = {k: (getattr(args, k) if getattr(args, k) is not None else per_model[name])
                  for k, (per_model, _) in INPUTS.items()}
        rows.append(estimate(name, values, candidates))
    print(f"\n{'model':<14}{'collect h':>10}{'pass s':>9}{'passes h':>10}{'step s':>8}{'CROPI h':>9}{'full h':>8}"
          f"{'speed-up':>10}{'pass share':>12}{'break-even':>12}")
    for r in rows:
        even = "-" if r["break_even_step_speedup"] is None else f"{r['break_even_step_speedup']:.2f}x"
        print(f"{r['model']:<14}{r['collection_hours']:>10.1f}{r['pass_seconds']:>9.0f}{r['passes_hours']:>10.1f}"
              f"{r['step_seconds']:>8.0f}{r['cropi_hours']:>9.1f}{r['full_hours']:>8.1f}"
              f"{r['wallclock_speedup']:>9.2f}x{r['pass_share']:>12.0%}{even:>12}")
    print("(checkpointing in the pass: " + ", ".join(f"{r['model']} {'on' if r['checkpointing'] else 'off'}"
                                                    for r in rows) + ", as the memory plan decides on 80 GiB)")
    print(json.dumps({r["model"]: {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()
                                   if k != "model"} for r in rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
