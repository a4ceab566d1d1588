#!/usr/bin/env python
r"""Collect offline rollouts from the initial policy (beta) into the record format (see cropi_verl/rollout/records.py).

    python scripts/collect_rollouts.py --backend hf --model PATH --input data/toy/train.parquet \
        --out rollouts/train --n 8 --temperature 0.5 --max-new-tokens 32

Resumable: rerunning the same command skips finished shards and gives identical records. ``--backend vllm`` runs
``--data-parallel-size`` engines of ``--tensor-parallel-size`` GPUs each (cropi_verl/rollout/vllm_backend.py); both
backends store beta's log-probs recomputed by the HF model in ``--logprob-dtype``, the influence pass's forward: it
must be the workers' dtype (``cropi.workers.dtype``; auto = bfloat16 on GPU, float32 on CPU), which
scripts/preflight.py checks against the manifest. ``--adaptive-first K0`` draws K0 responses per prompt first and
the other n - K0 only for prompts whose K0 rewards differ (cropi_verl/rollout/collect.py; what it misses:
scripts/adaptive_collection.py).
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch

from cropi_verl.models.presets import model_source
from cropi_verl.rollout.collect import (LOGPROB_TOKENS, MAX_VERIFIER_FAILURES, CollectConfig, adaptive_first_problem,
                                        collect_rollouts, hf_backend)
from cropi_verl.utils.cli import HelpFormatter, check_writable, one_line_errors, step
from cropi_verl.utils.config_rules import Count, Fraction, GroupSize, NonNegativeInt, Positive, arg_type


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    d = CollectConfig(model="", input="")
    ap.add_argument("--backend", choices=["hf", "vllm"], default="hf")
    ap.add_argument("--model", required=True, help="an HF folder, a preset name (scripts/fetch_model.py) or a hub id")
    ap.add_argument("--input", required=True, help="verl-format prompts parquet")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--n", type=arg_type(GroupSize), default=d.n,
                    help="responses per prompt (paper: 8 train, 32 validation)")
    ap.add_argument("--temperature", type=arg_type(Positive), default=d.temperature)
    ap.add_argument("--top-p", type=arg_type(Fraction), default=d.top_p)
    ap.add_argument("--max-new-tokens", type=arg_type(Count), default=d.max_new_tokens)
    ap.add_argument("--max-prompt-tokens", type=arg_type(Count), default=d.max_prompt_tokens,
                    help="longer prompts are skipped")
    ap.add_argument("--seed", type=arg_type(NonNegativeInt), default=d.seed)
    ap.add_argument("--shard-size", type=arg_type(Count), default=d.shard_size, help="prompts per atomic shard")
    ap.add_argument("--batch-size", type=arg_type(Count), default=d.batch_size, help="prompts per generate call (hf)")
    ap.add_argument("--max-prompts", type=arg_type(Count), default=None,
                    help="collect only this many prompts, drawn with --seed (default: all)")
    ap.add_argument("--logprob-tokens", type=arg_type(Count), default=LOGPROB_TOKENS,
                    help="padded tokens per forward when recomputing beta's log-probs")
    ap.add_argument("--logprob-dtype", choices=["float32", "bfloat16", "float16"], default=d.logprob_dtype,
                    help="dtype of the HF model recomputing beta's log-probs: the influence workers' (recorded in "
                         "the manifest)")
    ap.add_argument("--tensor-parallel-size", type=arg_type(Count), default=d.tensor_parallel_size,
                    help="vllm: GPUs per engine")
    ap.add_argument("--data-parallel-size", type=arg_type(Count), default=1, help="vllm: engines (one per TP group)")
    ap.add_argument("--gpu-memory-utilization", type=arg_type(Fraction), default=0.5,
                    help="vllm: share of each GPU for vLLM; the rest holds the HF model for the log-probs")
    ap.add_argument("--threads", type=arg_type(NonNegativeInt), default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--max-verifier-failures", type=arg_type(Fraction), default=MAX_VERIFIER_FAILURES,
                    help="share of a shard's responses whose reward math-verify may fail to decide (NaN, dropped and "
                         "counted); more stops the collection")
    ap.add_argument("--adaptive-first", type=arg_type(Count), default=None, metavar="K0",
                    help="an adaptive collection: K0 (2 .. n) responses per prompt first, the other n - K0 only for "
                         "prompts whose K0 rewards are not all equal (default: n at once)")
    args = ap.parse_args(argv)
    if problem := adaptive_first_problem(args.adaptive_first, args.n):
        raise ValueError(f"--adaptive-first {args.adaptive_first} with --n {args.n}: {problem}")
    args.model = model_source(args.model)  # a preset name, a checked folder or a hub id
    check_writable(args.out, "--out")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = CollectConfig(
        model=args.model, input=args.input, backend=args.backend, n=args.n, temperature=args.temperature,
        top_p=args.top_p, max_new_tokens=args.max_new_tokens, max_prompt_tokens=args.max_prompt_tokens,
        seed=args.seed, shard_size=args.shard_size, batch_size=args.batch_size,
        tensor_parallel_size=args.tensor_parallel_size, max_prompts=args.max_prompts,
        logprob_dtype=args.logprob_dtype, adaptive_first=args.adaptive_first,
    )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    step(f"loading {args.model}")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if args.backend == "hf":
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()  # samples in fp32
        backend = hf_backend(model, tokenizer, cfg, args.logprob_tokens)
    else:
        from cropi_verl.rollout.vllm_backend import vllm_backend

        from cropi_verl.models.special_tokens import token_rule_of

        backend = vllm_backend(cfg, token_rule_of(args.model, tokenizer), args.data_parallel_size, args.logprob_tokens,
                               args.gpu_memory_utilization)
    step(f"collecting into {args.out} (finished shards are kept)")
    path = collect_rollouts(cfg, args.out, backend, tokenizer, max_verifier_failures=args.max_verifier_failures)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
