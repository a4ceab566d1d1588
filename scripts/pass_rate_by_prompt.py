#!/usr/bin/env python
"""A policy's pass rate on the embedded task per prompt format, skill family and tier: which format gives GRPO
mixed groups (a pass rate between 0 and 1) for a given model.

    python scripts/pass_rate_by_prompt.py --model smollm2-135m                     # toy, paper and fewshot
    python scripts/pass_rate_by_prompt.py --model smollm2-135m --formats fewshot --tiers 1 --per-cell 8

The prompts are the first ``--per-cell`` pool prompts of each (family, tier) cell of the embedded task
(``cropi_verl/data/toy_task.py``), written in each format (``in_prompt_format``); each gets ``--k`` samples at
``--temperature`` (``eval.accuracy.avg_at_k``, the demo's evaluation) scored by the task's reward. Prints a table
(pass rate per cell and format), then one JSON line with every figure, the generated tokens and the seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cropi_verl.data.toy_task import FAMILIES, PROMPT_FORMATS, TIERS, ToyTaskConfig, build_toy_task, in_prompt_format
from cropi_verl.eval.accuracy import avg_at_k, mean_by
from cropi_verl.models.presets import model_source
from cropi_verl.utils.cli import HelpFormatter, one_line_errors, step
from cropi_verl.utils.config_rules import Count, NonNegativeInt, Positive, arg_type


@one_line_errors(resumes=False)
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--model", required=True, help="an HF folder or a preset name (scripts/fetch_model.py)")
    ap.add_argument("--formats", nargs="+", choices=PROMPT_FORMATS, default=list(PROMPT_FORMATS))
    ap.add_argument("--tiers", nargs="+", type=int, choices=TIERS, default=[1, 2])
    ap.add_argument("--per-cell", type=arg_type(Count), default=3, help="prompts per (family, tier) cell")
    ap.add_argument("--k", type=arg_type(Count), default=4, help="samples per prompt")
    ap.add_argument("--temperature", type=arg_type(Positive), default=0.7)
    ap.add_argument("--max-new-tokens", type=arg_type(Count), default=96)
    ap.add_argument("--seed", type=arg_type(NonNegativeInt), default=0)
    ap.add_argument("--threads", type=arg_type(Count), default=2)
    args = ap.parse_args(argv)
    model_dir = model_source(args.model)
    torch.set_num_threads(args.threads)
    pool = build_toy_task(ToyTaskConfig())["train"]
    cell = cell_of(pool)
    pool = pool.assign(_cell=cell)
    rows = pool[[t in args.tiers for _, t in cell]].groupby("_cell", sort=False).head(args.per_cell).drop(columns="_cell")
    step(f"loading {model_dir}")
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    result: dict = {"model": str(model_dir), "prompts": len(rows), "k": args.k, "formats": {}}
    for fmt in args.formats:
        step(f"format {fmt}: {len(rows)} prompts x {args.k} samples")
        frame = in_prompt_format(rows, fmt)
        t0 = time.time()
        acc = avg_at_k(model, tok, frame, args.k, args.temperature, args.max_new_tokens, args.seed, batch_size=8)
        cells = {f"{f}/{t}": float(np.mean([a for a, c in zip(acc, cell_of(frame)) if c == (f, t)]))
                 for f in FAMILIES for t in args.tiers}
        result["formats"][fmt] = {"mean": float(np.mean(acc)), "by_family": mean_by(frame, acc, "family"),
                                  "by_tier": mean_by(frame, acc, "tier"), "by_cell": cells,
                                  "seconds": round(time.time() - t0, 1)}
    print(f"\n{'cell':<10}" + "".join(f"{fmt:>10}" for fmt in args.formats))
    for key in result["formats"][args.formats[0]]["by_cell"]:
        print(f"{key:<10}" + "".join(f"{result['formats'][fmt]['by_cell'][key]:>10.2f}" for fmt in args.formats))
    print(f"{'mean':<10}" + "".join(f"{result['formats'][fmt]['mean']:>10.2f}" for fmt in args.formats))
    print(f"{'seconds':<10}" + "".join(f"{result['formats'][fmt]['seconds']:>10.0f}" for fmt in args.formats))
    print(json.dumps(result))
    return 0


def cell_of(frame) -> list[tuple[str, int]]:
    """Each row's (family, tier)."""
    return [(e["family"], e["tier"]) for e in frame["extra_info"]]


if __name__ == "__main__":
    sys.exit(main())
