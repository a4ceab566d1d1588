#!/usr/bin/env python
"""The end-to-end cost of one paper-scale CROPI run on verl against full-data GRPO, in GPU hours: an estimate whose
every input is named with its source (a measurement of ours, a published figure, or an assumption).

    python scripts/plan.py [--model qwen2.5-1.5b|qwen2.5-7b|r1-distill-qwen-1.5b|all|<model folder>] ...

CROPI = offline collection (vLLM generation of K responses per pool prompt + beta's log-probs by one HF forward)
+ one influence pass per stage (POPI gradients of the pool prompts that are not zero-advantage, and of the
validation prompts; with ``--rescore candidates``, the passes after stage 0 compute only the candidates' share of the
pool's, ``CandidateConfig.scored_share``) + its GRPO steps; full data = its GRPO steps. The pass's FLOPs per prompt
are the plan's (``cropi_verl/plan.py``: 6 or 8 P T, checkpointing decided by the memory plan as
``cropi.workers.gradient_checkpointing=auto`` does), run at the MFU measured on an H100. Prints a table per model and
a final JSON line: collection hours, seconds per boundary pass, seconds per GRPO step, each side's hours, the pass's
share of CROPI's time, the wall-clock speed-up at the paper's step counts, the selection's overhead O (collection +
passes) as a share of CROPI's training S_c s, and the step speed-up full data must need for CROPI to break even in
wall-clock, (O + S_c s) / (S_c s) = 1 + overhead (defined without full data's step count).

Step counts are the paper's per model (PAPER.md's results table): Qwen2.5-1.5B 650 against 1,750, Qwen2.5-7B 300
against 600; R1-Distill-Qwen-1.5B has no step ratio (CROPI @300 beats full data @300), so its speed-up is left out
unless ``--full-steps`` is given. A local model folder is sized from its config.json; it needs ``--cropi-steps`` and
``--full-steps``, and its other per-model inputs are the published model's nearest in parameter count (labelled).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_pass_check import MODELS as QWEN  # noqa: E402  (the Qwen2.5 configs, published on the HF hub)

from cropi_verl import plan  # noqa: E402
from cropi_verl.curriculum.settings import CandidateConfig  # noqa: E402
from cropi_verl.utils.cli import HelpFormatter, one_line_errors  # noqa: E402
from cropi_verl.utils.config_rules import AtLeastOne, Fraction, Positive, ShareOf, arg_type  # noqa: E402

# the published models' configs (HF hub config.json values); R1-Distill-Qwen-1.5B is Qwen2.5-1.5B's shape with an
# untied head (1.78B parameters)
MODELS = {"qwen2.5-1.5b": QWEN["qwen2.5-1.5b"], "qwen2.5-7b": QWEN["qwen2.5-7b"],
          "r1-distill-qwen-1.5b": dict(QWEN["qwen2.5-1.5b"], tie_word_embeddings=False)}
R1 = "r1-distill-qwen-1.5b"
# name -> (value per model, source): the inputs, each with where it comes from
MEASURED_MFU = 0.32  # docs/results.md §7: 0.30 s/prompt, Qwen2.5-1.5B, 8 x (256 + 1,024) tokens, bf16, one H100
INPUTS = {
    "n_gpus": ({"qwen2.5-1.5b": 8, "qwen2.5-7b": 8, R1: 8}, "published: the paper's setup (8 GPUs)"),
    "pool": ({"qwen2.5-1.5b": 54_888, "qwen2.5-7b": 54_888, R1: 54_888},
             "published: GSM8K train 7,473 + MATH train 7,500 + DeepScaleR 40,315, minus 400 held out"),
    "responses": ({"qwen2.5-1.5b": 8, "qwen2.5-7b": 8, R1: 8}, "published: the paper's K = 8 offline responses"),
    "prompt_tokens": ({"qwen2.5-1.5b": 256, "qwen2.5-7b": 256, R1: 256}, "assumption: a chat-templated math prompt"),
    "mean_response": ({"qwen2.5-1.5b": 1024, "qwen2.5-7b": 1536, R1: 4096},
                      "assumption: mean response tokens at T = 0.5 (caps 2,048 / 4,096 / 8,192)"),
    "zero_share": ({"qwen2.5-1.5b": 0.5, "qwen2.5-7b": 0.5, R1: 0.5},
                   "assumption: share of pool prompts whose 8 rewards are equal (no gradient)"),
    "val_prompts": ({"qwen2.5-1.5b": 200, "qwen2.5-7b": 200, R1: 200}, "published: 100 per targeted set, two sets"),
    "stages": ({"qwen2.5-1.5b": 10, "qwen2.5-7b": 10, R1: 10}, "assumption: the recipes' 10 stages (the paper does not say)"),
    "fraction": ({"qwen2.5-1.5b": 0.1, "qwen2.5-7b": 0.1, R1: 0.1},
                 "published: the paper selects a tenth of the pool per stage"),
    "mfu": ({"qwen2.5-1.5b": MEASURED_MFU, "qwen2.5-7b": MEASURED_MFU, R1: MEASURED_MFU},
            "measured: the pass's MFU on an H100 (docs/results.md section 7)"),
    "gen_tokens_per_gpu_s": ({"qwen2.5-1.5b": 12_000, "qwen2.5-7b": 4_000, R1: 12_000},
                             "assumption: vLLM decode throughput per GPU (batched, bf16, H100)"),
    "step_seconds": ({"qwen2.5-1.5b": 45.0, "qwen2.5-7b": 105.0, R1: 180.0},
                     "published: GRESO's verl GRPO step times (arXiv 2506.02177), as issue 27's model reads them; "
                     "R1-Distill: assumption, 1.5B's x 4 (4x the mean response)"),
    "grad_share": ({"qwen2.5-1.5b": 1.0, "qwen2.5-7b": 1.0, R1: 1.0},
                   "lever: the share L'/L of decoder blocks the pass's gradient covers (cropi.popi.grad_layers; "
                   "1 = null, the full gradient); the pass's FLOPs (2 + (4 + 2c) L'/L) / (6 + 2c)"),
    "collect_share": ({"qwen2.5-1.5b": 1.0, "qwen2.5-7b": 1.0, R1: 1.0},
                      "lever: the share of the K responses per pool prompt the collection draws (an adaptive first "
                      "draw, scripts/adaptive_collection.py's cost; 1 = off); beta's log-probs are computed for those"),
    "cropi_steps": ({"qwen2.5-1.5b": 650, "qwen2.5-7b": 300, R1: 300},
                    "published: CROPI's steps to full data's level (1.5B @650; 7B @300, 57.46 vs 57.44 on "
                    "GSM8K+MATH; R1-Distill @300, 47.94, already above full data's @300)"),
    "full_steps": ({"qwen2.5-1.5b": 1750, "qwen2.5-7b": 600, R1: None},
                   "published: full data's steps to that level (1.5B @1,750; 7B @600; R1-Distill: none, full data "
                   "@300 is below CROPI @300 and no later point is published)"),
}
INPUT_RULES = {"fraction": Fraction, "zero_share": ShareOf, "mfu": Fraction, "grad_share": Fraction,
               "collect_share": Fraction}  # the others: a number > 0
# the levers (issue 34): each input that shrinks the selection, and the paper's setting it is measured against
LEVERS = ("responses", "stages", "grad_share", "collect_share")
MAX_RESPONSE = {"qwen2.5-1.5b": 2048, "qwen2.5-7b": 4096, R1: 8192}  # the recipes' caps
STEP_KEYS = ("cropi_steps", "full_steps")


@dataclass(frozen=True)
class Target:
    """The model planned: its name, shape, the recipe's response cap, and the published model whose per-model
    inputs it takes (itself, or the nearest in parameter count for a folder)."""

    name: str
    shape: plan.ModelShape
    max_response: int
    inputs_of: str


def target(spec: str) -> Target:
    """A published model's name, or a local model folder (sized by ``plan.model_shape``)."""
    if spec in MODELS:
        return Target(spec, plan.ModelShape.from_config(MODELS[spec]), MAX_RESPONSE[spec], spec)
    if not (Path(spec) / "config.json").is_file():
        raise ValueError(f"--model {spec}: expected one of {', '.join(MODELS)}, all, or a local model folder with a "
                         "config.json")
    shape = plan.model_shape(spec)
    near = min(MODELS, key=lambda m: abs(plan.ModelShape.from_config(MODELS[m]).params() - shape.params()))
    return Target(Path(spec).name, shape, MAX_RESPONSE[near], near)


def grad_factor(share: float, checkpointing: bool) -> float:
    """The pass's FLOPs with the last L'/L = ``share`` of the blocks' gradient over the full pass's:
    (2 + (4 + 2c) share) / (6 + 2c), c = 1 under checkpointing (``influence.gradients.pass_flops``)."""
    c = 2 * checkpointing
    return (2 + (4 + c) * share) / (6 + c)


def estimate(t: Target, values: dict, candidates: CandidateConfig | None = None) -> dict:
    """Every figure of one model's run (module docstring); ``candidates``: ``--rescore candidates``'s settings;
    ``values["full_steps"]`` None: no speed-up (only the overhead and the break-even step speed-up)."""
    v, shape = values, t.shape
    p_count, gpus = shape.params(), v["n_gpus"]
    recipe = plan.RecipeShape(gpus, v["prompt_tokens"], v["mean_response"], v["responses"],
                              ppo_max_token_len_per_gpu=3 * (1024 + t.max_response))
    worker = plan.WorkerSettings(gradient_checkpointing=False)
    gpu = plan.GpuSpec(mfu=v["mfu"])
    checkpointing = not plan.plan(shape, replace(recipe, max_response_length=t.max_response), worker,
                                  gpu).boundary_fits()
    tokens = plan.tokens_per_prompt(recipe, share_prompt=False)
    per_prompt = (grad_factor(v["grad_share"], checkpointing) * plan.pass_flops(shape, tokens, checkpointing)
                  / (gpu.peak_flops * v["mfu"]))
    pool_s = v["pool"] * (1 - v["zero_share"]) * per_prompt / gpus
    val_s = v["val_prompts"] * per_prompt / gpus
    pass_s = pool_s + val_s
    share = 1.0 if candidates is None else candidates.scored_share(v["fraction"], 1 - v["zero_share"])
    passes_s = pass_s + (v["stages"] - 1) * (val_s + share * pool_s)
    generated = v["pool"] * v["responses"] * v["mean_response"] * v["collect_share"]
    collect_s = (generated / (v["gen_tokens_per_gpu_s"] * gpus)  # + beta's log-probs of the drawn responses
                 + 2 * p_count * v["pool"] * tokens * v["collect_share"] / (gpu.peak_flops * v["mfu"] * gpus))
    steps_cropi_s = v["cropi_steps"] * v["step_seconds"]
    cropi_s = collect_s + passes_s + steps_cropi_s
    overhead = (collect_s + passes_s) / steps_cropi_s
    full_s = None if v["full_steps"] is None else v["full_steps"] * v["step_seconds"]
    return {"model": t.name, "params": p_count, "checkpointing": checkpointing, "pass_seconds_per_prompt": per_prompt,
            "collection_hours": collect_s / 3600, "pass_seconds": pass_s, "rescored_share": share,
            "passes_hours": passes_s / 3600,
            "step_seconds": v["step_seconds"], "cropi_steps_hours": steps_cropi_s / 3600,
            "cropi_hours": cropi_s / 3600, "full_hours": None if full_s is None else full_s / 3600,
            "pass_share": passes_s / cropi_s, "overhead": overhead,
            "wallclock_speedup": None if full_s is None else full_s / cropi_s,
            "break_even_step_speedup": 1 + overhead, "grad_factor": grad_factor(v["grad_share"], checkpointing),
            "selection_hours": (collect_s + passes_s) / 3600}


def model_values(t: Target, args: argparse.Namespace) -> dict:
    """Each input: the command line's, else the published default of ``t.inputs_of``; a folder model's step
    counts must be given (``ValueError`` otherwise)."""
    if t.inputs_of != t.name and None in (args.cropi_steps, args.full_steps):
        raise ValueError(f"--model {t.name}: no published step counts for this model; give both --cropi-steps and "
                         "--full-steps (CROPI's steps and full data's to the same accuracy)")
    return {k: (getattr(args, k) if getattr(args, k) is not None else per_model[t.inputs_of])
            for k, (per_model, _) in INPUTS.items()}


def paper_selection_hours(t: Target, v: dict) -> float:
    """The selection's hours (collection + passes) of ``v`` at the paper's setting of the levers (K = 8, 10 stages,
    the full gradient, no adaptive draw, every pass rescoring the pool)."""
    return estimate(t, v | {k: INPUTS[k][0][t.inputs_of] for k in LEVERS})["selection_hours"]


def lever_line(t: Target, v: dict, r: dict, candidates: CandidateConfig | None) -> str:
    """Each lever's value and cost factor, and the selection's hours against the paper's setting (``r``'s
    ``selection_hours`` and ``paper_selection_hours``)."""
    k, k0 = v["responses"], INPUTS["responses"][0][t.inputs_of]
    hours, paper_hours = r["selection_hours"], r["paper_selection_hours"]
    rescore = ("rescore candidates: the pool share of each later pass "
               f"x{r['rescored_share']:.2f}" if candidates else "rescore true (every pass scores the pool)")
    return (f"levers ({t.name}): K = {k:g} of the paper's {k0} (collection and pass tokens x{k / k0:.2f}); "
            f"{v['stages']:g} stages ({v['stages']:g} passes); the last {v['grad_share']:.1%} of the blocks (pass FLOPs "
            f"x{r['grad_factor']:.3f}); the collection draws {v['collect_share']:.0%} of K; {rescore} -> selection "
            f"{hours:.1f} h against {paper_hours:.1f} h at the paper's setting (x{hours / paper_hours:.2f})")


def cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


@one_line_errors(resumes=False)
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--model", default="all", help=f"{', '.join(MODELS)}, all, or a local model folder")
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
    targets = [target(m) for m in (MODELS if args.model == "all" else [args.model])]
    values = [model_values(t, args) for t in targets]  # every check before any output
    print("inputs:")
    for key, (per_model, source) in INPUTS.items():
        given = getattr(args, key)
        shown = given if given is not None else ", ".join(f"{t.name} {v[key]}" for t, v in zip(targets, values))
        print(f"  {key:<22} {shown}  [{source if given is None else 'this command line'}]")
    for t in targets:
        if t.inputs_of != t.name:
            print(f"  ({t.name}: {t.shape.params():,} parameters; the inputs not given are {t.inputs_of}'s, the "
                  "published model nearest in size)")
    given = (args.rescore, args.multiple, args.explore) != (ap.get_default("rescore"), ap.get_default("multiple"),
                                                             ap.get_default("explore"))
    print(f"  {'rescore':<22} {args.rescore}" + (f" (multiple {args.multiple}, explore {args.explore})" if candidates
                                                else "")
          + f"  [{'this command line' if given else 'assumption: configs/cropi_trainer.yaml, cropi.rescore'}]")
    rows = [estimate(t, v, candidates) | {"paper_selection_hours": paper_selection_hours(t, v)}
            for t, v in zip(targets, values)]
    print(f"\n{'model':<22}{'collect h':>10}{'pass s':>9}{'passes h':>10}{'step s':>8}{'CROPI h':>9}{'full h':>8}"
          f"{'speed-up':>10}{'pass share':>12}{'overhead':>10}{'break-even':>12}")
    for r in rows:
        speed = cell(r["wallclock_speedup"], ".2f") + ("x" if r["wallclock_speedup"] else "")
        print(f"{r['model']:<22}{r['collection_hours']:>10.1f}{r['pass_seconds']:>9.0f}{r['passes_hours']:>10.1f}"
              f"{r['step_seconds']:>8.0f}{r['cropi_hours']:>9.1f}{cell(r['full_hours'], '.1f'):>8}"
              f"{speed:>10}{r['pass_share']:>12.0%}{r['overhead']:>10.0%}{r['break_even_step_speedup']:>11.2f}x")
    print("(overhead: collection + passes over CROPI's training; break-even: the step speed-up over CROPI's steps that "
          "full data must need for CROPI to break even in wall-clock, 1 + overhead)")
    for r, v in zip(rows, values):
        if v["full_steps"] is None:
            print(f"({r['model']}: no speed-up: the paper publishes no full-data step count reaching CROPI's level; "
                  "give --full-steps for one)")
    for t, v, r in zip(targets, values, rows):
        print(lever_line(t, v, r, candidates))
    print("(checkpointing in the pass: " + ", ".join(f"{r['model']} {'on' if r['checkpointing'] else 'off'}"
                                                    for r in rows) + ", as the memory plan decides on 80 GiB)")
    print(json.dumps({r["model"]: {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()
                                   if k != "model"} for r in rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
