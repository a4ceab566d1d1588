#!/usr/bin/env python
"""Projection fidelity: precision@10% of each projector's ranking against the exact-gradient ranking.

On the tiny policy (small enough for exact gradients): collect offline rollouts of a pool sample and of the
targeted validation sets, compute exact POPI gradients G [N, d] once (the identity projector), then for every
method / k / subset ratio score the projected gradients by cosine against the projected validation gradients.

    precision@10%(set) = |top10%(projected scores) & top10%(exact scores)| / |top10%(exact)|

averaged over the validation sets. Prints a table; the last line is one JSON object whose ``precision_at_10``
maps each method to its value at the default k.

    python scripts/projection_fidelity.py [--quick] [--policy DIR]

On a real model (``--model``, a preset such as smollm2-135m or a local HF folder) the exact cosines are computed
streaming (``cropi_verl/influence/exact_reference.py``: each pool gradient dotted with the dense validation
directions as backward produces it; no [N, d] or d x k matrix), and sparse_jl is measured at each k of ``--ks``
(default 2^11 .. 2^17) in the same pass. Its rollouts: ``--rollouts DIR`` (beta's, as the demo writes them under
``<output_dir>/rollouts``: train/, val_add/, val_sub/), else ``--pool`` prompts of the embedded task collected into
``--work`` (resumable) in ``--prompt``'s format with ``--n`` responses each.

With ``--grad-layers``, each L' given also runs the pass on the last L' blocks' gradient (``popi.grad_layers``) and
reports the overlap of its top 10% (exact, and sparse_jl at ``--default-k``) with the full gradient's exact top 10%,
and Spearman's rho of its exact cosines against the full gradient's (``rho``: the whole ranking);
with ``--responses``, each K' runs it on the first K' responses of every pool prompt (prompts matched by id: fewer
may be scorable); with ``--halves``, two disjoint halves of every prompt's responses are two independent draws
of K/2, and the overlap of their exact top 10% is the noise floor at K/2. ``--default-responses R`` makes the first R
responses the reference (the default selection the levers are compared with), so that a collection of K = 2R gives
the floor at the default R itself.

    python scripts/projection_fidelity.py --model smollm2-135m --pool 540 --n 4 [--grad-layers 2 8 15]

The embedded task with 16-prompt tier-1 validation sets has 543 distinct training prompts (its tier-1 cells are
small); a larger ``--pool`` is refused before any work.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cropi_verl.data.toy_task import PROMPT_FORMATS, TARGETED_SETS, ToyTaskConfig, build_toy_task, in_prompt_format
from cropi_verl.data.verl_format import write_verl_parquet
from cropi_verl.influence.exact_reference import precision_at, rank_agreement, reference_scores, validation_direction
from cropi_verl.influence.gradients import (PopiConfig, grad_layers_problem, last_layers_only, parameter_offsets,
                                            pass_flops, popi_features)
from cropi_verl.influence.projection import make_projector
from cropi_verl.influence.scoring import influence_scores
from cropi_verl.models.presets import model_source
from cropi_verl.models.special_tokens import model_token_rule
from cropi_verl.models.tiny_policy import TinyPolicyConfig, build_tiny_policy
from cropi_verl.rollout.collect import CollectConfig, collect_rollouts, hf_backend
from cropi_verl.rollout.records import RolloutLimits, read_rollouts, to_prompt_rollouts
from cropi_verl.utils.cache import cache_root
from cropi_verl.utils.cli import HelpFormatter, one_line_errors
from cropi_verl.utils.config_rules import Count, Positive, arg_type

REAL_KS = [1 << e for e in range(11, 18)]  # 2^11 .. 2^17


SPLITS = ("train",) + TARGETED_SETS


def given_rollouts(rollouts: Path) -> dict[str, Path]:
    """Each split's rollouts parquet under ``--rollouts`` (checked before any work)."""
    paths = {s: rollouts / s / "rollouts.parquet" for s in SPLITS}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise ValueError(f"--rollouts {rollouts}: expected train/, val_add/ and val_sub/ rollouts (the demo's "
                         f"<output_dir>/rollouts); missing {', '.join(missing)}")
    return paths


def pool_frames(args: argparse.Namespace) -> dict:
    """The embedded task's splits to collect (built before any work: an exhausted cell is refused here)."""
    try:
        return build_toy_task(ToyTaskConfig(n_train=args.pool, n_val=args.val_prompts, val_tier=args.val_tier, n_sft=0))
    except ValueError as e:
        raise ValueError(f"--pool {args.pool}: {e}; expected at most the task's distinct prompts (543 with the "
                         f"default 16 tier-1 validation prompts per set)") from None


def collected_rollouts(args: argparse.Namespace, frames: dict, model, tok, folder: str) -> dict[str, Path]:
    """Each split's rollouts parquet, collected into ``--work`` (resumable)."""
    work = args.work or cache_root() / "fidelity" / Path(folder).name
    out = {}
    for split in SPLITS:
        frame = in_prompt_format(frames[split], args.prompt)
        src = write_verl_parquet(frame, work / "data" / f"{split}.parquet")
        cfg = CollectConfig(model=folder, input=str(src), n=args.n if split == "train" else args.val_n,
                            temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=args.seed, batch_size=8,
                            shard_size=40)
        out[split] = collect_rollouts(cfg, work / "rollouts" / split, hf_backend(model, tok, cfg), tok)
    return out


POPI = PopiConfig(micro_batch_tokens=1 << 14, share_prompt=True)


def directions_at(model, prompts: dict, args: argparse.Namespace, pad_id: int) -> tuple[dict, dict]:
    """Each targeted set's exact validation direction at ``model``'s trainable parameters, and its usable prompts."""
    out = {s: validation_direction(model, prompts[s], pad_id, POPI, args.max_val_prompts) for s in TARGETED_SETS}
    return {s: v for s, (v, _) in out.items()}, {s: n for s, (_, n) in out.items()}


def streamed_scores(model, pool: list, directions: dict, ks: list[int], args: argparse.Namespace, pad_id: int):
    """(exact and sparse_jl cosines of ``pool`` against ``directions`` at ``model``'s trainable parameters, d,
    seconds of the pass)."""
    t0 = time.time()
    _, dim = parameter_offsets(model)
    projectors = {str(k): make_projector("sparse_jl", dim, k, args.seed) for k in ks}
    ref = reference_scores(model, pool, directions, projectors, pad_id, POPI, progress=True)
    return ref, dim, time.time() - t0


def top_ids(ids: list[int], scores: np.ndarray, n: int) -> set[int]:
    return {ids[i] for i in np.argsort(-scores, kind="stable")[:n]}


def mean_overlap(ref, other, exact: bool = True, k: str | None = None) -> float:
    """Mean over the targeted sets of |top n (other) & top n (ref's exact)| / n, n = 10% of ref's scored prompts;
    ``other`` may have scored other prompts (fewer responses): matched by prompt id."""
    n = max(1, round(0.1 * len(ref.prompt_ids)))
    got = lambda s: other.exact[s] if exact else other.projected[k][s]  # noqa: E731
    return float(np.mean([len(top_ids(ref.prompt_ids, ref.exact[s], n) & top_ids(other.prompt_ids, got(s), n)) / n
                          for s in TARGETED_SETS]))


def mean_rho(ref, other) -> float:
    """Mean over the targeted sets of Spearman's rho between ref's and other's exact cosines, on the prompts both
    scored (``rank_agreement``): the whole ranking, where a top 10% of a small pool is a handful of prompts."""
    return float(np.mean([rank_agreement(dict(zip(ref.prompt_ids, ref.exact[s])),
                                         dict(zip(other.prompt_ids, other.exact[s]))) for s in TARGETED_SETS]))


def agreement(ref, other, k: str) -> dict:
    """A lever's scores against the reference: exact and sparse_jl (at ``k``) top-10% overlap, and rho."""
    return {"exact_overlap": mean_overlap(ref, other), "sketch_overlap": mean_overlap(ref, other, False, k),
            "exact_rho": mean_rho(ref, other)}


def real_model_fidelity(args: argparse.Namespace) -> int:
    """The streaming mode (module docstring): one table row per k (and per --grad-layers), one JSON line."""
    t0 = time.time()
    if args.default_responses is not None and (args.default_responses < 2 or
                                               any(n > args.default_responses for n in args.responses)):
        raise ValueError(f"--default-responses {args.default_responses}: expected >= 2 and >= each --responses "
                         f"{args.responses}")
    if few := [n for n in args.responses if n < 2]:
        raise ValueError(f"--responses {few}: expected K' >= 2 (a group advantage needs two responses)")
    folder = model_source(args.model)
    if not Path(folder).is_dir():
        raise ValueError(f"--model {args.model}: expected a preset name or a local HF model folder")
    paths = given_rollouts(args.rollouts) if args.rollouts else None
    frames = None if paths else pool_frames(args)
    load = lambda: AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()  # noqa: E731
    model, tok = load(), AutoTokenizer.from_pretrained(folder)
    layers = model.config.num_hidden_layers
    bad = [n for n in args.grad_layers if grad_layers_problem(n, layers)]
    if bad:
        raise ValueError(f"--grad-layers {bad}: {grad_layers_problem(bad[0], layers)}")
    rule = model_token_rule(model, tok)
    paths = paths or collected_rollouts(args, frames, model, tok, folder)
    limits = RolloutLimits.of_model(folder)
    prompts = {s: to_prompt_rollouts(read_rollouts(p, rule.stop_ids, limits)) for s, p in paths.items()}
    ks = args.ks or REAL_KS
    t_val = time.time()
    directions, used = directions_at(model, prompts, args, rule.pad_id)
    print(f"validation directions: {used} usable prompts ({time.time() - t_val:.0f}s)", flush=True)
    def responses(part) -> list:
        """Each pool prompt with its responses ``part(K)`` only (a slice of its own K)."""
        return [replace(p, responses=p.responses[part(len(p.rewards))], rewards=p.rewards[part(len(p.rewards))],
                        behaviour_logprobs=p.behaviour_logprobs[part(len(p.rewards))]) for p in prompts["train"]]

    pool = responses(lambda _: slice(args.default_responses)) if args.default_responses else prompts["train"]
    ref, dim, seconds = streamed_scores(model, pool, directions, ks, args, rule.pad_id)
    n = len(ref.prompt_ids)
    rows = [{"k": k, **{s: precision_at(ref.exact[s], ref.projected[str(k)][s]) for s in TARGETED_SETS}}
            for k in ks]
    print(f"\nsparse_jl against exact cosines: {n} scored pool prompts of {len(prompts['train'])}, top "
          f"{max(1, round(0.1 * n))} per set, validation prompts {used}, d={dim:,} ({seconds:.0f}s)")
    print(f"{'k':>8}" + "".join(f"{s:>10}" for s in TARGETED_SETS) + f"{'mean':>8}")
    for r in rows:
        r["mean"] = float(np.mean([r[s] for s in TARGETED_SETS]))
        print(f"{r['k']:>8}" + "".join(f"{r[s]:>10.3f}" for s in TARGETED_SETS) + f"{r['mean']:>8.3f}")
    k = str(args.default_k)
    layer_rows = []
    for n_layers in args.grad_layers:
        restricted = load()
        last_layers_only(restricted, n_layers)
        sub_dirs, _ = directions_at(restricted, prompts, args, rule.pad_id)
        sub, d_sub, sec = streamed_scores(restricted, pool, sub_dirs, [args.default_k], args, rule.pad_id)
        layer_rows.append({"grad_layers": n_layers, "of": layers, "dim": d_sub, "seconds_ratio": round(sec / seconds, 3),
                           "flop_factor": round(pass_flops(restricted, 1) / pass_flops(model, 1), 3),
                           **agreement(ref, sub, k)})
    response_rows = []
    for n_resp in args.responses:
        sub, _, sec = streamed_scores(model, responses(lambda _, n=n_resp: slice(n)), directions, [args.default_k], args, rule.pad_id)
        response_rows.append({"responses": n_resp, "scored": len(sub.prompt_ids), "seconds_ratio": round(sec / seconds, 3),
                              **agreement(ref, sub, k)})
    if layer_rows:
        print(f"\nthe last L' of {layers} blocks only, against the full gradient's exact top 10%: the restricted "
              f"exact cosines' top 10% and sparse_jl's at k={args.default_k}")
        print(f"{'L_prime':>8}{'d':>13}{'FLOP factor':>13}{'s ratio':>9}{'exact':>8}{'sketch':>8}{'rho':>8}")
        for r in layer_rows:
            print(f"{r['grad_layers']:>8}{r['dim']:>13,}{r['flop_factor']:>13.3f}{r['seconds_ratio']:>9.3f}"
                  f"{r['exact_overlap']:>8.3f}{r['sketch_overlap']:>8.3f}{r['exact_rho']:>8.3f}")
    halves = None
    if args.halves:  # two independent draws of K/2 responses each: a floor on two draws' agreement at K
        a, b = (streamed_scores(model, responses(part), directions, [args.default_k], args, rule.pad_id)[0]
                for part in (lambda k: slice(k // 2), lambda k: slice(k // 2, 2 * (k // 2))))
        halves = {"scored": [len(a.prompt_ids), len(b.prompt_ids)], "exact_overlap": mean_overlap(a, b),
                  "exact_rho": mean_rho(a, b)}
        print(f"\nnoise floor: two disjoint halves of each pool prompt's responses agree on "
              f"{halves['exact_overlap']:.3f} of their exact top 10% ({halves['scored']} scored), rho "
              f"{halves['exact_rho']:.3f} on the prompts both scored")
    if response_rows:
        reference = "all of them" if args.default_responses is None else f"the first {args.default_responses}"
        print(f"\nthe first K' responses of each pool prompt only, against {reference} (exact top 10%)")
        print(f"{'K_prime':>8}{'scored':>8}{'s ratio':>9}{'exact':>8}{'sketch':>8}{'rho':>8}")
        for r in response_rows:
            print(f"{r['responses']:>8}{r['scored']:>8}{r['seconds_ratio']:>9.3f}{r['exact_overlap']:>8.3f}"
                  f"{r['sketch_overlap']:>8.3f}{r['exact_rho']:>8.3f}")
    print(json.dumps({"model": str(args.model), "dim": dim, "n_pool": len(prompts["train"]), "n_scored": n,
                      "val_prompts": used, "precision_at_10": {str(r["k"]): round(r["mean"], 4) for r in rows},
                      "grad_layers": layer_rows, "responses": response_rows, "halves": halves,
                      "default_responses": args.default_responses, "seconds": round(time.time() - t0, 1)}))
    return 0


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
    ap.add_argument("--pool", type=int, default=None,
                    help="pool prompts to rollout (default 600, quick 200; with --model 540: the task has 543)")
    ap.add_argument("--default-k", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", nargs="*", default=["sparse_jl", "subset_gaussian", "subset_rademacher", "gaussian"])
    ap.add_argument("--ks", nargs="*", type=int, default=None, help="k sweep (default 512 2048 <default-k> 32768)")
    ap.add_argument("--ratios", nargs="*", type=float, default=None, help="subset ratio sweep (default .05 .15 .5 1)")
    real = ap.add_argument_group("a real model (--model): the streaming exact reference, sparse_jl only")
    real.add_argument("--model", default=None, help="a preset (smollm2-135m) or a local HF model folder")
    real.add_argument("--rollouts", type=Path, default=None, help="beta's rollouts: the demo's <output_dir>/rollouts")
    real.add_argument("--work", type=Path, default=None,
                      help="where collected rollouts go (default $CROPI_CACHE_DIR/fidelity/<model>)")
    real.add_argument("--prompt", choices=PROMPT_FORMATS, default="fewshot", help="the task's prompt format")
    real.add_argument("--n", type=arg_type(Count), default=4, help="responses per pool prompt")
    real.add_argument("--val-n", type=arg_type(Count), default=8, help="responses per validation prompt")
    real.add_argument("--val-prompts", type=arg_type(Count), default=16, help="prompts per validation set")
    real.add_argument("--val-tier", type=int, choices=[1, 2, 3], default=1, help="the validation sets' tier")
    real.add_argument("--max-new-tokens", type=arg_type(Count), default=128)
    real.add_argument("--grad-layers", type=int, nargs="*", default=[],
                      help="also each L': the last L' blocks' gradient (popi.grad_layers) against the full one's "
                           "exact selection, at --default-k")
    real.add_argument("--responses", type=int, nargs="*", default=[],
                      help="also each K': the pool's first K' responses only (fewer in the collection and the "
                           "pass) against the reference (all K, or --default-responses), at --default-k")
    real.add_argument("--default-responses", type=arg_type(Count), default=None, metavar="R",
                      help="the reference selection (exact and sparse_jl, --grad-layers too) on the first R responses "
                           "of each pool prompt (default: all K); with K = 2R, --halves is the noise floor at R")
    real.add_argument("--halves", action="store_true",
                      help="also the agreement of two disjoint halves of each pool prompt's responses (the noise "
                           "floor of two draws of K/2)")
    real.add_argument("--temperature", type=arg_type(Positive), default=0.7, help="sampling temperature")
    real.add_argument("--max-val-prompts", type=arg_type(Count), default=100,
                      help="usable prompts per validation direction (influence.max_val_prompts)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    if args.model:
        if args.pool is None and not args.rollouts:
            args.pool = 540
        return real_model_fidelity(args)
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
