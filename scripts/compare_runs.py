#!/usr/bin/env python
"""Compare one method between two demo runs seed by seed, e.g. full re-scoring against ``rescore=candidates``:

    python scripts/compare_runs.py outputs/tiny_cpu outputs/rescore_cand [--method cropi] [--tolerance 0.008]

Each run directory (the demo's ``output_dir``) holds the method's finished runs, one per training seed
(``<method>/result.json``, ``<method>.seed<s>/result.json``); the seeds both runs have are compared. It prints:

- per stage: the gradients each run's influence pass computed (``n_gradients``; for a run made before it was
  recorded, the pool less its zero-advantage prompts; mean over seeds), the overlap
  |S_A & S_B| / |S_A| of the two selections (mean, and the range over seeds), and the boundary's seconds and FLOPs
  (load cannot skew the FLOPs);
- per evaluation step: the targeted accuracy of each run, averaged over the seeds, and B - A;
- a final JSON line: ``overlap_by_stage``, ``gradients_ratio``, ``pass_seconds_ratio`` and ``pass_flops_ratio`` (B
  over A, summed over the stages after 0, where they differ), ``mean_curve_diff`` (B - A averaged over the
  evaluations after step 0),
  ``final_diff``, ``best_diff`` and ``as_accurate``: no figure of the three below ``-tolerance``. The default
  tolerance is the sampling noise of one point of the demo's targeted mean at ``eval.k=16``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

from cropi_verl.utils.cli import HelpFormatter, one_line_errors
from cropi_verl.utils.config_rules import NonNegative, arg_type


def seed_runs(run: Path, method: str) -> dict[int, dict]:
    """``{seed: result}`` of ``method``'s finished runs under ``run`` (the first seed's directory has no suffix; the
    seed itself is read from its stage states)."""
    out = {}
    for path in sorted(run.glob(f"{method}*/result.json")):
        if not re.fullmatch(rf"{re.escape(method)}(\.seed\d+)?", path.parent.name):
            continue
        result = json.loads(path.read_text())
        out[int(result["stages"][0]["settings"]["seed"])] = result
    if not out:
        raise ValueError(f"{run}: no finished {method} run ({method}/result.json); run the demo there first")
    return out


def overlap(a: dict, b: dict) -> float:
    """|S_A & S_B| / |S_A| of two stages' selections."""
    return len(set(a["selected_ids"]) & set(b["selected_ids"])) / len(a["selected_ids"])


def stat(stage: dict, key: str) -> float:
    """A stage's ``key``: ``gradients`` = ``n_gradients`` (older runs: the pool, or the prompts given to the pass,
    ``n_scored``, less the zero-advantage ones); else the recorded stat (NaN where absent)."""
    st = stage["stats"]
    if key == "gradients" and "n_gradients" not in st:
        return st.get("n_scored", st.get("n_pool", np.nan)) - st.get("n_zero_advantage", 0)
    return st.get("n_gradients" if key == "gradients" else key, np.nan)


def mean_curve(runs: list[dict]) -> tuple[list[int], np.ndarray]:
    steps = [h["step"] for h in runs[0]["history"]]
    return steps, np.mean([[h["targeted"] for h in r["history"]] for r in runs], axis=0)


def compare(a: dict[int, dict], b: dict[int, dict], tolerance: float) -> dict:
    seeds = sorted(a.keys() & b.keys())
    if not seeds:
        raise ValueError(f"the runs share no training seed (A: {sorted(a)}, B: {sorted(b)})")
    n_stages = len(a[seeds[0]]["stages"])
    if any(len(r[k]["stages"]) != n_stages for r in (a, b) for k in seeds):
        raise ValueError(f"the runs have other numbers of stages ({n_stages} in A's first seed); compare runs of the "
                         "same schedule")
    stages = []
    for s in range(n_stages):
        pairs = [(a[k]["stages"][s], b[k]["stages"][s]) for k in seeds]
        ov = [overlap(x, y) for x, y in pairs]
        stages.append({"stage": s, "overlap": float(np.mean(ov)), "overlap_range": [min(ov), max(ov)],
                       **{f"{key}_{side}": float(np.mean([stat(p[i], key) for p in pairs]))
                          for key in ("gradients", "seconds", "pass_flops") for i, side in enumerate("ab")}})
    later = stages[1:] or stages
    steps, curve_a = mean_curve([a[k] for k in seeds])
    steps_b, curve_b = mean_curve([b[k] for k in seeds])
    if steps != steps_b:
        raise ValueError(f"the runs evaluate at other steps (A: {steps}, B: {steps_b})")
    diffs = {"mean_curve_diff": float(np.mean((curve_b - curve_a)[1:])), "final_diff": float(curve_b[-1] - curve_a[-1]),
             "best_diff": float(curve_b.max() - curve_a.max())}
    return {"seeds": seeds, "stages": stages, "steps": steps, "curve_a": curve_a.tolist(), "curve_b": curve_b.tolist(),
            "overlap_by_stage": [round(s["overlap"], 3) for s in stages],
            "gradients_ratio": sum(s["gradients_b"] for s in later) / sum(s["gradients_a"] for s in later),
            "pass_seconds_ratio": sum(s["seconds_b"] for s in later) / sum(s["seconds_a"] for s in later),
            "pass_flops_ratio": sum(s["pass_flops_b"] for s in later) / sum(s["pass_flops_a"] for s in later),
            **diffs, "tolerance": tolerance, "as_accurate": all(v >= -tolerance for v in diffs.values())}


def print_report(r: dict, names: tuple[str, str]) -> None:
    print(f"A = {names[0]}, B = {names[1]}; seeds {r['seeds']}")
    print(f"{'stage':>5} {'grads A':>9} {'grads B':>9} {'overlap':>8} {'range':>11} {'s A':>7} {'s B':>7} "
          f"{'GFLOP A':>9} {'GFLOP B':>9}")
    for s in r["stages"]:
        print(f"{s['stage']:>5} {s['gradients_a']:>9.1f} {s['gradients_b']:>9.1f} {s['overlap']:>8.2f} "
              f"{s['overlap_range'][0]:>5.2f}-{s['overlap_range'][1]:<5.2f} "
              f"{s['seconds_a']:>7.2f} {s['seconds_b']:>7.2f} "
              f"{s['pass_flops_a'] / 1e9:>9.1f} {s['pass_flops_b'] / 1e9:>9.1f}")
    print(f"{'step':>5} {'A':>7} {'B':>7} {'B - A':>7}")
    for step, x, y in zip(r["steps"], r["curve_a"], r["curve_b"]):
        print(f"{step:>5} {x:>7.4f} {y:>7.4f} {y - x:>+7.4f}")
    keys = ("seeds", "overlap_by_stage", "gradients_ratio", "pass_seconds_ratio", "pass_flops_ratio", "mean_curve_diff",
            "final_diff", "best_diff", "tolerance", "as_accurate")
    print(json.dumps({k: round(r[k], 4) if isinstance(r[k], float) else r[k] for k in keys}))


@one_line_errors(resumes=False)
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("a", type=Path, help="run directory A (the reference, e.g. full re-scoring)")
    ap.add_argument("b", type=Path, help="run directory B")
    ap.add_argument("--method", default="cropi", help="the method compared")
    ap.add_argument("--tolerance", type=arg_type(NonNegative), default=0.008,
                    help="accuracy B may lose and still be as accurate")
    args = ap.parse_args(argv)
    for run in (args.a, args.b):
        if not run.is_dir():
            raise ValueError(f"{run}: not a directory (a demo output_dir was expected)")
    report = compare(seed_runs(args.a, args.method), seed_runs(args.b, args.method), args.tolerance)
    print_report(report, (str(args.a), str(args.b)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
