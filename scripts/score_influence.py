#!/usr/bin/env python
r"""Score a training pool by off-policy influence (POPI) at a given model, and select from it.

    python scripts/score_influence.py --model CKPT --train-rollouts R/train/rollouts.parquet \
        --val gsm8k=R/gsm8k/rollouts.parquet --val math=R/math/rollouts.parquet --out scores/step0 \
        [--method sparse_jl --k 8192 --strategy cropi --fraction 0.1 --model-step 0]

Writes ``<out>/scores.parquet`` (prompt_id, pass_rate, score_<set>, skipped, selected_rank),
``<out>/selection.json`` and the feature stores under ``<out>/features`` (a rerun resumes them).
Bad input (a file that is not a rollouts file, a pool of which no prompt can be scored, ...) ends it with one line
``error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from cropi_verl.curriculum.influence_pass import influence_pass, store_manifest
from cropi_verl.curriculum.schedule import StageSchedule
from cropi_verl.curriculum.settings import SelectionConfig
from cropi_verl.influence.gradients import PopiConfig, parameter_offsets
from cropi_verl.influence.pipeline import local_featurizer
from cropi_verl.influence.projection import METHODS, make_projector
from cropi_verl.influence.scoring import METRICS
from cropi_verl.influence.selection import STRATEGIES
from cropi_verl.models.presets import model_source
from cropi_verl.models.special_tokens import token_rule_of
from cropi_verl.rollout.records import RolloutLimits, read_rollouts
from cropi_verl.utils.atomic import atomic_write_json, atomic_write_parquet
from cropi_verl.utils.cli import HelpFormatter, check_writable, named_paths, one_line_errors, step
from cropi_verl.utils.identity import file_digest, model_digest
from cropi_verl.utils.run_lock import run_lock
from cropi_verl.utils.config_rules import Count, Fraction, NonNegativeInt, Positive, arg_type


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--model", required=True, help="the current policy: an HF folder or a preset name")
    ap.add_argument("--train-rollouts", required=True)
    ap.add_argument("--val", action="append", required=True, metavar="NAME=ROLLOUTS", help="a validation set (repeat)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--model-step", type=arg_type(NonNegativeInt), default=0,
                    help="recorded in the feature-store manifest")
    ap.add_argument("--method", choices=METHODS, default="sparse_jl")
    ap.add_argument("--k", type=arg_type(Count), default=8192)
    ap.add_argument("--proj-seed", type=arg_type(NonNegativeInt), default=0)
    ap.add_argument("--subset-ratio", type=arg_type(Fraction), default=0.15, help="subset_* methods")
    ap.add_argument("--strategy", choices=STRATEGIES, default="cropi")
    ap.add_argument("--fraction", type=arg_type(Fraction), default=0.1)
    ap.add_argument("--metric", choices=METRICS, default="cosine")
    ap.add_argument("--max-val-prompts", type=arg_type(Count), default=100)
    ap.add_argument("--micro-batch-tokens", type=arg_type(Count), default=PopiConfig.micro_batch_tokens,
                    help="tokens per forward/backward (response rows, longest first; one row at least)")
    ap.add_argument("--logit-chunk-tokens", type=arg_type(Count), default=PopiConfig.logit_chunk_tokens,
                    help="response positions whose [n, vocab] logits are alive at once")
    ap.add_argument("--clip-ratio", type=arg_type(Positive), default=None)
    ap.add_argument("--share-prompt", action=argparse.BooleanOptionalAction, default=True,
                    help="encode each prompt once per micro-batch (KV cache); exact")
    ap.add_argument("--merge-duplicates", action=argparse.BooleanOptionalAction, default=True,
                    help="one weighted row per distinct response; exact, only used without --clip-ratio")
    ap.add_argument("--native", action=argparse.BooleanOptionalAction, default=True,
                    help="sparse_jl on CPU: the C kernel when it builds (same bits; --no-native: the torch path)")
    ap.add_argument("--shard-size", type=arg_type(Count), default=256)
    ap.add_argument("--seed", type=arg_type(NonNegativeInt), default=0,
                    help="selection tie-breaks and validation subsampling")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    args.model = model_source(args.model)  # a preset name, a checked folder or a hub id
    check_writable(args.out, "--out")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    return score(ap, args)


def input_digests(model: str, train: str, val: dict) -> dict:
    """What the features are computed from, by content (``utils.identity``): the model's weights and tokenizer, and
    each rollouts file. A rerun into the same --out with any of them changed is refused by the feature stores."""
    return {"model": model_digest(model), "train_rollouts": file_digest(train),
            **{f"val_rollouts.{n}": file_digest(p) for n, p in sorted(val.items())}}


def score(ap: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The influence pass of ``main``'s arguments (its module docstring)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    step(f"loading {args.model} and the rollouts")
    tok = AutoTokenizer.from_pretrained(args.model)
    stops = token_rule_of(args.model, tok).stop_ids
    limits = RolloutLimits.of_model(args.model)  # before any gradient: ids, positions, log-probs, rewards
    val_paths = named_paths(ap, args.val, "--val")
    val = {name: read_rollouts(path, stops, limits) for name, path in val_paths.items()}
    train = read_rollouts(args.train_rollouts, stops, limits)
    with run_lock(args.out, "scripts/score_influence.py"):  # one run per --out at a time, once the inputs are read
        return scored(args, tok, train, val, val_paths)


def scored(args: argparse.Namespace, tok, train, val: dict, val_paths: dict) -> int:
    """``score`` once its inputs are read and --out is locked."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).to(args.device)
    _, dim = parameter_offsets(model)
    proj = make_projector(args.method, dim, args.k, args.proj_seed, args.subset_ratio, native=args.native)
    popi = PopiConfig(clip_ratio=args.clip_ratio, micro_batch_tokens=args.micro_batch_tokens,
                      logit_chunk_tokens=args.logit_chunk_tokens, share_prompt=args.share_prompt,
                      merge_duplicates=args.merge_duplicates)
    step(f"the influence pass (finished feature-store shards under {args.out / 'features'} are kept)")
    selection = SelectionConfig(StageSchedule(1, 1, args.fraction, args.strategy),
                                store_manifest(proj, popi, model=str(args.model), model_step=args.model_step,
                                               inputs=input_digests(args.model, args.train_rollouts, val_paths)),
                                args.seed, args.metric, args.max_val_prompts, args.shard_size, progress=True)
    res = influence_pass(local_featurizer(model, proj, token_rule_of(args.model, tok).pad_id, popi), train, val, args.out / "features",
                         selection)
    atomic_write_parquet(res.scores, args.out / "scores.parquet")
    atomic_write_json(
        {"strategy": args.strategy, "fraction": args.fraction, "selected": res.selection.prompt_ids.tolist(),
         "n_pool": len(train), "n_zero_advantage": res.n_zero_advantage, "n_nonfinite": res.n_nonfinite,
         "n_excluded_responses": res.n_excluded, "shortfall": res.selection.shortfall},
        args.out / "selection.json",
    )
    print(f"selected {len(res.selection.prompt_ids)} of {len(train)} prompts "
          f"({res.n_zero_advantage} zero-advantage removed, {res.n_excluded} responses excluded as empty or with a "
          f"non-finite reward); wrote {args.out}/scores.parquet, selection.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
