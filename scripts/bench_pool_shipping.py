#!/usr/bin/env python
"""Seconds (and bytes) from the task runner to the influence workers per pass: the pool as POPI inputs
(``records.to_prompt_rollouts``), shard by shard through verl's ``DP_COMPUTE_PROTO`` dispatch to a Ray worker group
that deserializes each prompt's arrays (``rollouts_to_proto`` / ``proto_to_rollouts``) and computes nothing.

    python scripts/bench_pool_shipping.py [--prompts 55000] [--responses 8] [--tokens 800] [--baseline-prompts 2000]

A synthetic pool (token counts uniform in [tokens/2, 3 tokens/2], a rollouts file's int64 / float64 arrays).
``after``: the pool as the pass ships it now (arrays as they are). ``before``: as ``to_prompt_rollouts`` made it
until this change, a Python list of numpy scalars per sequence (``list(array)``), timed on the first
``--baseline-prompts`` prompts only (the whole pool that way needs tens of GB) and scaled by the prompt count.
Prints a table and a final JSON line: seconds per pass before (scaled) and after, their ratio, bytes per prompt.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import pandas as pd
import ray
from verl import DataProto
from verl.single_controller.base import Worker
from verl.single_controller.base.decorator import Dispatch, register
from verl.single_controller.ray import RayClassWithInitArgs, RayResourcePool, RayWorkerGroup

from cropi_verl.influence.gradients import PromptRollouts
from cropi_verl.rollout.records import to_prompt_rollouts
from cropi_verl.utils.cli import HelpFormatter
from cropi_verl.workers.influence_worker import proto_to_rollouts, rollouts_to_proto

SHARD = 256  # cropi.shard_size: prompts per featurize call


class Sink(Worker):
    """Receives a shard's chunk, rebuilds its prompts (as the influence worker does), returns each one's token count."""

    @register(dispatch_mode=Dispatch.DP_COMPUTE_PROTO)
    def consume(self, data: DataProto) -> DataProto:
        tokens = [sum(len(r) for r in p.responses) for p in proto_to_rollouts(data)]
        return DataProto.from_single_dict({"tokens": np.asarray(tokens, dtype=np.int64)})


def synthetic_pool(n: int, k: int, tokens: int, seed: int = 0) -> pd.DataFrame:
    """A rollouts frame's POPI columns: ``n`` prompts of ``k`` responses, lengths uniform in [tokens/2, 3 tokens/2]."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(tokens // 2, 3 * tokens // 2 + 1, size=(n, k))
    rows = []
    for i in range(n):
        rows.append({"prompt_id": i, "prompt_token_ids": rng.integers(0, 150_000, 200),
                     "response_ids": [rng.integers(0, 150_000, m) for m in lengths[i]],
                     "logprobs": [-rng.random(m) for m in lengths[i]], "reward": [float(j % 2) for j in range(k)],
                     "flag": [""] * k})
    return pd.DataFrame(rows)


def as_lists(prompts: list[PromptRollouts]) -> list[PromptRollouts]:
    """The former POPI inputs: a Python list (of numpy scalars) per token sequence."""
    return [PromptRollouts(p.prompt_id, list(p.prompt_ids), [list(r) for r in p.responses],
                           [list(b) for b in p.behaviour_logprobs], list(p.rewards)) for p in prompts]


def ship(group: RayWorkerGroup, frame: pd.DataFrame, lists: bool) -> tuple[float, int, int]:
    """(seconds, tokens the workers received, serialized bytes) for one pass over ``frame``."""
    t0 = time.perf_counter()
    prompts = to_prompt_rollouts(frame)
    if lists:
        prompts = as_lists(prompts)
    received, size = 0, 0
    for start in range(0, len(prompts), SHARD):
        proto = rollouts_to_proto(list(prompts[start:start + SHARD]))
        size += len(ray.cloudpickle.dumps(proto)) if start == 0 else 0
        out = group.consume(proto)
        received += int(out.non_tensor_batch["tokens"].sum())
    return time.perf_counter() - t0, received, size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--prompts", type=int, default=55_000)
    ap.add_argument("--responses", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=800, help="mean response tokens")
    ap.add_argument("--baseline-prompts", type=int, default=2_000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    ray.init(num_cpus=max(4, args.workers), include_dashboard=False, log_to_driver=False)
    pool = RayResourcePool([args.workers], use_gpu=False, max_colocate_count=1)
    group = RayWorkerGroup(pool, RayClassWithInitArgs(ray.remote(Sink)), device_name="cpu")
    t0 = time.perf_counter()
    frame = synthetic_pool(args.prompts, args.responses, args.tokens)
    made = time.perf_counter() - t0
    n_base = min(args.baseline_prompts, args.prompts)
    before, before_tokens, before_bytes = ship(group, frame.iloc[:n_base], lists=True)
    after_part, after_part_tokens, after_bytes = ship(group, frame.iloc[:n_base], lists=False)
    after, after_tokens, _ = ship(group, frame, lists=False)
    assert before_tokens == after_part_tokens, "both paths must deliver the same tokens"
    scaled = before * args.prompts / n_base
    rows = [("before (lists), measured", n_base, before, before_bytes), ("after (arrays), measured", n_base,
            after_part, after_bytes), ("before (lists), scaled", args.prompts, scaled, None),
            ("after (arrays), whole pool", args.prompts, after, None)]
    print(f"pool: {args.prompts} prompts x {args.responses} responses x ~{args.tokens} tokens "
          f"({after_tokens / 1e6:.0f}M response tokens; built in {made:.1f} s), shards of {SHARD}, "
          f"{args.workers} workers, {os.cpu_count()} cores")
    print(f"{'path':<28} {'prompts':>8} {'seconds':>9} {'first shard bytes':>18}")
    for name, n, sec, size in rows:
        print(f"{name:<28} {n:>8} {sec:>9.2f} {'' if size is None else f'{size:,}':>18}")
    print(json.dumps({"prompts": args.prompts, "responses": args.responses, "mean_tokens": args.tokens,
                      "baseline_prompts": n_base, "seconds_before_scaled": round(scaled, 2),
                      "seconds_before_measured": round(before, 3), "seconds_after_same_prompts": round(after_part, 3),
                      "seconds_after": round(after, 2), "speedup_same_prompts": round(before / after_part, 2),
                      "shard_bytes_before": before_bytes, "shard_bytes_after": after_bytes,
                      "target_seconds": 30, "meets_target": after < 30}))
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
