#!/usr/bin/env python
r"""avg@k accuracy of an HF checkpoint on verl-format evaluation sets, with targeted / untargeted means.

    python scripts/evaluate.py --model CKPT --set gsm8k=data/gsm8k_test.parquet --set math=data/math500.parquet \
        --set amc23=data/amc23.parquet --targeted gsm8k math [--k 4 --temperature 1.0 --max-new-tokens 2048]

Prints a table; the last line is one JSON object: {"val": {set: acc}, "targeted": .., "untargeted": ..}.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cropi_verl.data.verl_format import read_verl_parquet
from cropi_verl.eval.accuracy import avg_at_k
from cropi_verl.models.presets import model_source
from cropi_verl.utils.cli import HelpFormatter, named_paths, one_line_errors, step
from cropi_verl.utils.config_rules import Count, NonNegativeInt, Positive, arg_type


@one_line_errors(resumes=False)
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--model", required=True, help="an HF folder, a preset name (scripts/fetch_model.py) or a hub id")
    ap.add_argument("--set", action="append", required=True, metavar="NAME=PARQUET", help="an evaluation set (repeat)")
    ap.add_argument("--targeted", nargs="*", default=[], help="set names averaged as 'targeted'; the rest 'untargeted'")
    ap.add_argument("--k", type=arg_type(Count), default=4)
    ap.add_argument("--temperature", type=arg_type(Positive), default=1.0)
    ap.add_argument("--max-new-tokens", type=arg_type(Count), default=1024)
    ap.add_argument("--batch-size", type=arg_type(Count), default=32)
    ap.add_argument("--seed", type=arg_type(NonNegativeInt), default=0)
    args = ap.parse_args(argv)
    args.model = model_source(args.model)  # a preset name, a checked folder or a hub id
    sets = {name: read_verl_parquet(path) for name, path in named_paths(ap, args.set, "--set").items()}
    unknown = [t for t in args.targeted if t not in sets]
    if unknown:
        ap.error(f"--targeted names {unknown} are not among the --set names {list(sets)}")
    step(f"loading {args.model}")
    tok = AutoTokenizer.from_pretrained(args.model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).to(device)
    val = {}
    for name, frame in sets.items():
        step(f"evaluating {name}")
        val[name] = float(np.mean(avg_at_k(model, tok, frame, args.k, args.temperature, args.max_new_tokens, args.seed,
                                           args.batch_size, progress=True)))
    rest = [n for n in val if n not in args.targeted]
    out = {"val": val,
           "targeted": float(np.mean([val[n] for n in args.targeted])) if args.targeted else None,
           "untargeted": float(np.mean([val[n] for n in rest])) if rest else None}
    print(f"{'set':<16}{'avg@' + str(args.k):>10}")
    for name, acc in val.items():
        print(f"{name:<16}{acc:>10.3f}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
