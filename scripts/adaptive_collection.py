#!/usr/bin/env python
"""Adaptive collection, measured on a full collection: what drawing ``k0`` responses first, and the other K - k0 only
for prompts whose first ``k0`` rewards are not all equal, would save and lose (issue 34's lever; AR3PO's idea).

Responses are i.i.d. draws, so a rollouts file of K responses per prompt holds the adaptive collection too: its first
k0 usable responses are the first draw. Per ``--first`` k0 (2 .. K):

    stopped      prompts whose first k0 rewards are all equal (no second draw; they count as zero-advantage)
    cost         responses drawn over N K = (k0 stopped + K (N - stopped)) / (N K)
    missed       stopped prompts whose K rewards are mixed: scorable prompts the selection loses
    kept wrongly not stopped, yet zero-advantage at K: second draws spent for nothing (none can be: a first draw
                 with mixed rewards stays mixed; the column is there to show it)

With ``--scores`` (a stage's ``scores.parquet`` of the influence pass on these rollouts, e.g. the demo's
``<run>/cropi/curriculum/stage_000/scores.parquet``), the selection ``select`` makes with the missed prompts unscored
is compared with the one it makes on the full collection: |A & B| / n at ``--fraction`` of the pool.

    python scripts/adaptive_collection.py RUN/rollouts/train/rollouts.parquet [--first 2 3 4] [--scores FILE]

Prints a table and a final JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from cropi_verl.influence.selection import SelectionPool, select
from cropi_verl.rollout.records import read_rollouts, to_prompt_rollouts
from cropi_verl.utils.cli import HelpFormatter, one_line_errors
from cropi_verl.utils.config_rules import Fraction, arg_type


def equal(rewards) -> bool:
    return len(rewards) < 2 or max(rewards) == min(rewards)


def adaptive_row(rewards: dict[int, list[float]], k0: int) -> dict:
    """The module docstring's counts for first draw ``k0`` (``rewards``: prompt id -> its K usable rewards)."""
    n, k = len(rewards), max(len(r) for r in rewards.values())
    stopped = {p for p, r in rewards.items() if equal(r[:k0])}
    zero = {p for p, r in rewards.items() if equal(r)}
    drawn = sum(min(k0, len(r)) if p in stopped else len(r) for p, r in rewards.items())
    return {"first": k0, "prompts": n, "stopped": len(stopped), "zero_advantage": len(zero),
            "missed": len(stopped - zero), "kept_wrongly": len(zero - stopped),
            "cost": drawn / sum(len(r) for r in rewards.values()), "k": k, "_stopped": stopped}


def selection_overlap(scores: pd.DataFrame, dropped: set[int], fraction: float, seed: int) -> float:
    """|select(all scores) & select(scores without ``dropped``)| / n, strategy cropi."""
    ids = scores["prompt_id"].to_numpy(np.int64)
    cols = {c.removeprefix("score_"): scores[c].to_numpy(float) for c in scores if c.startswith("score_")}
    full = select("cropi", SelectionPool(ids, cols), fraction, seed)
    mask = np.isin(ids, list(dropped))
    part = select("cropi", SelectionPool(ids, {v: np.where(mask, np.nan, s) for v, s in cols.items()}), fraction,
                  seed)
    return len(set(full.prompt_ids) & set(part.prompt_ids)) / full.n_target


@one_line_errors(resumes=False)
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("rollouts", type=Path, help="a rollouts parquet of K responses per prompt")
    ap.add_argument("--first", type=int, nargs="+", default=None, help="first draws k0 (2 .. K; default 2 .. K - 1)")
    ap.add_argument("--scores", type=Path, default=None, help="the influence pass's scores.parquet on these rollouts")
    ap.add_argument("--fraction", type=arg_type(Fraction), default=0.1, help="the selected share of the pool")
    ap.add_argument("--seed", type=int, default=0, help="the selection's tie-break seed")
    args = ap.parse_args(argv)
    scores = pd.read_parquet(args.scores) if args.scores else None  # read before any output: a bad file stops here
    if scores is not None and not any(c.startswith("score_") for c in scores):
        raise ValueError(f"--scores {args.scores}: expected score_<set> columns (an influence pass's scores.parquet)")
    rewards = {p.prompt_id: list(p.rewards) for p in to_prompt_rollouts(read_rollouts(args.rollouts))}
    k = max(len(r) for r in rewards.values())
    firsts = args.first or list(range(2, k))
    if bad := [f for f in firsts if not 2 <= f <= k]:
        raise ValueError(f"--first {bad}: expected a first draw between 2 and K = {k} (the file's responses per "
                         "prompt)")
    rows = [adaptive_row(rewards, f) for f in firsts]
    for r in rows:
        stopped = r.pop("_stopped")
        if scores is not None:
            r["selection_overlap"] = selection_overlap(scores, stopped - {p for p in stopped if equal(rewards[p])},
                                                       args.fraction, args.seed)
    print(f"{len(rewards)} prompts x K = {k} responses ({args.rollouts})")
    print(f"{'first':>6}{'cost':>7}{'stopped':>9}{'zero-adv':>10}{'missed':>8}{'kept wrongly':>14}"
          + (f"{'overlap':>9}" if scores is not None else ""))
    for r in rows:
        print(f"{r['first']:>6}{r['cost']:>7.2f}{r['stopped']:>9}{r['zero_advantage']:>10}{r['missed']:>8}"
              f"{r['kept_wrongly']:>14}" + (f"{r['selection_overlap']:>9.2f}" if scores is not None else ""))
    print(json.dumps({"rollouts": str(args.rollouts), "k": k, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
