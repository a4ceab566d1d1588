#!/usr/bin/env python
"""Projection fidelity: precision@10% of each projector's ranking against the exact-gradient ranking.

On the tiny policy (small enough for exact gradients): collect offline rollouts of a pool sample and of the
targeted validation sets, compute exact POPI gradients G [N, d] once (the identity projector), then for every
method / k / subset ratio score the projected gradients by cosine against the projected validation gradients.

    precision@10%(set) = |top10%(projected scores) & top10%(exact scores)| / |top10%(exact)|

averaged over the validation sets. Prints a table; the last line is one JSON object whose ``precision_at_10``
maps each method to its value at the default k.

    python scripts/projection_fidelity.py [--quick] [--policy DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cropi_verl.data.toy_task import TARGETED_SETS, ToyTaskConfig, build_toy_task
from cropi_verl.data.verl_format import write_verl_parquet
from cropi_verl.influence.gradients import PopiConfig, parameter_offsets, popi_features
from cropi_verl.influence.projection import make_projector
from cropi_verl.models.special_tokens import model_token_rule
from cropi_verl.influence.scoring import influence_scores
from cropi_verl.models.tiny_policy import TinyPolicyConfig, build_tiny_policy
from cropi_verl.rollout.collect import CollectConfig, collect_rollouts, hf_backend
from cropi_verl.rollout.records import read_rollouts, to_prompt_rollouts
from cropi_verl.utils.cli import HelpFormatter, one_line_errors


def precision_at(exact: np.ndarray, approx: np.ndarray, frac: float = 0.1) -> float:
    n = max(1, int(round(frac * len(exact))))
    top = lambda s: set(np.argsort(-s, kind="stable")[:n].tolist())  # noqa: E731
    return len(top(exact) & top(approx)) / n


def exact_features(model, tok, frame, n: int, seed: int, workdir: Path) -> torch.Tensor:
    """Exact (identity-projected) POPI gradients of the non-zero-advantage prompts of ``frame``."""
    src = write_verl_parquet(frame, workdir / "prompts.parquet")
    cfg = CollectConfig(model="tiny", input=str(src), n=n, temperature=1.0, max_new_tokens=32, seed=seed,
                        shard_size=1000, batch_size=50)
    roll = collect_rollouts(cfg, workdir / "rollouts", hf_backend(model, tok, cfg), tok, progress=False)
    _, dim = parameter_offsets(model)
    prompts = to_prompt_rollouts(read_rollouts(roll, model_token_rule(model, tok).stop_ids))
    res = popi_features(model, prompts, make_projector("identity", dim), model_token_rule(model, tok).pad_id, PopiConfig())
    return res.features


@one_line_errors(resumes=False)
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small pool and sweep (<= 60 s with a cached policy)")
    ap.add_argument("--policy", type=Path, default=None, help="HF checkpoint (default: the tiny policy, cached)")
    ap.add_argument("--pool", type=int, default=None, help="pool prompts to rollout (default 600, quick 200)")
    ap.add_argument("--default-k", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", nargs="*", default=["sparse_jl", "subset_gaussian", "subset_rademacher", "gaussian"])
    ap.add_argument("--ks", nargs="*", type=int, default=None, help="k sweep (default 512 2048 <default-k> 32768)")
    ap.add_argument("--ratios", nargs="*", type=float, default=None, help="subset ratio sweep (default .05 .15 .5 1)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    t0 = time.time()
    pool_n = args.pool or (200 if args.quick else 600)
    val_n = 8 if args.quick else 16
    ks = args.ks or ([args.default_k] if args.quick else [512, 2048, args.default_k, 32768])
    ratios = args.ratios or ([0.15] if args.quick else [0.05, 0.15, 0.5, 1.0])
    policy = args.policy or build_tiny_policy(TinyPolicyConfig())
    model = AutoModelForCausalLM.from_pretrained(policy).eval()
    tok = AutoTokenizer.from_pretrained(policy)
    frames = build_toy_task(ToyTaskConfig())
    with tempfile.TemporaryDirectory() as tmp:
        train = exact_features(model, tok, frames["train"].iloc[:pool_n], 8, args.seed, Path(tmp) / "train")
        val = {s: exact_features(model, tok, frames[s], val_n, args.seed, Path(tmp) / s).mean(0) for s in TARGETED_SETS}
    dim = train.shape[1]
    exact = {s: v.numpy() for s, v in influence_scores(train, val).items()}
    print(f"exact gradients: {train.shape[0]} scored prompts x d={dim} ({time.time() - t0:.0f}s)")
    rows = []
    for method in args.methods:
        for k in ks:
            for ratio in ratios if method.startswith("subset") else [None]:
                try:
                    proj = make_projector(method, dim, k, args.seed, subset_ratio=ratio or 1.0)
                except ValueError as e:  # the dense reference is refused beyond DENSE_MAX_ELEMENTS
                    print(f"skip {method} k={k}: {e}")
                    continue
                pv = {s: proj.project(v) for s, v in val.items()}
                approx = influence_scores(proj.project(train), pv)
                prec = float(np.mean([precision_at(exact[s], approx[s].numpy()) for s in exact]))
                rows.append({"method": method, "k": k, "subset_ratio": ratio, "precision_at_10": prec})
    print(f"\n{'method':<20}{'k':>7}{'subset':>8}{'prec@10%':>10}")
    for r in rows:
        print(f"{r['method']:<20}{r['k']:>7}{'' if r['subset_ratio'] is None else r['subset_ratio']:>8}"
              f"{r['precision_at_10']:>10.3f}")
    at_default = {}
    for r in rows:
        if r["k"] == args.default_k and r["subset_ratio"] in (None, 0.15):
            at_default[r["method"]] = r["precision_at_10"]
    print(json.dumps({"precision_at_10": at_default, "default_k": args.default_k, "n_scored": int(train.shape[0]),
                      "dim": dim, "seconds": round(time.time() - t0, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
