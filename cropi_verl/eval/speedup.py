"""The step-level speed-up: how much sooner a method reaches the baseline's best validation accuracy.

For a curve of (step, accuracy) points: ``best(baseline)`` = its highest accuracy and the first step it is reached;
``steps_to_reach(curve, a)`` = the first step whose accuracy is >= a (None if never);
speed-up = steps_baseline_best / steps_to_reach(method, best(baseline)) (None if never reached).
"""

from __future__ import annotations

from typing import Sequence


def best_point(steps: Sequence[int], acc: Sequence[float]) -> tuple[int, float]:
    """(first step of the maximum, the maximum)."""
    i = max(range(len(acc)), key=lambda j: (acc[j], -steps[j]))
    return int(steps[i]), float(acc[i])


def steps_to_reach(steps: Sequence[int], acc: Sequence[float], target: float) -> int | None:
    for s, a in zip(steps, acc):
        if a >= target:
            return int(s)
    return None


def step_speedup(base_steps: Sequence[int], base_acc: Sequence[float], steps: Sequence[int], acc: Sequence[float]) -> dict:
    """Speed-up of (steps, acc) over the baseline curve, with the points it is computed from."""
    b_step, b_acc = best_point(base_steps, base_acc)
    reach = steps_to_reach(steps, acc, b_acc)
    if reach is None:
        ratio = None
    elif reach == 0:  # reached before training: equal if the baseline's best is its start, else unbounded
        ratio = 1.0 if b_step == 0 else float("inf")
    else:
        ratio = b_step / reach
    return {"baseline_best_step": b_step, "baseline_best": b_acc, "steps_to_reach": reach, "speedup": ratio}
