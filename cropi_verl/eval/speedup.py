"""The speed-up, in steps and in seconds: how much sooner a method reaches an accuracy level of the baseline's curve.

For a curve of (step, accuracy) points: ``best(baseline)`` = its highest accuracy and the first step it is reached;
``steps_to_reach(curve, a)`` = the first step whose accuracy is >= a (None if never).

- The speed-up (the target's definition): speed-up = steps_baseline_best / steps_to_reach(method, best(baseline))
  (None if never reached).
- At a fraction f of the baseline's gain: the level a_f = a_0 + f (best - a_0), a_0 = the baseline's first point,
  and speed-up_f = steps_to_reach(baseline, a_f) / steps_to_reach(method, a_f). With f < 1 it does not hinge on the
  single highest, noisiest point of the baseline's curve; f = 1 is the speed-up above.
- Wall-clock: with ``seconds[i]`` the cumulative seconds a run has spent by ``steps[i]`` (training, selection and any
  fixed cost paid before step 0), speed-up = baseline's seconds at its best / the method's seconds when it first
  reaches that accuracy.
- Compute: the same with the cumulative FLOPs a run has spent (``compute_speedup``): deterministic for a seed and a
  machine type, whatever the machine's load.

A speed-up over a baseline that needed nothing (its best at step 0, i.e. at 0 seconds) is 0/0: None, with
``speedup_note`` = ``UNDEFINED`` in the result. A level the method reaches at step 0 (0 seconds) but the baseline
only later is an unbounded speed-up.
"""

from __future__ import annotations

from typing import Sequence

from cropi_verl.utils.config_rules import Fraction, config_problems

UNDEFINED = "full data's best is at step 0, before any training: a speed-up over it is 0/0"


def best_point(steps: Sequence[int], acc: Sequence[float]) -> tuple[int, float]:
    """(first step of the maximum, the maximum)."""
    i = max(range(len(acc)), key=lambda j: (acc[j], -steps[j]))
    return int(steps[i]), float(acc[i])


def steps_to_reach(steps: Sequence[int], acc: Sequence[float], target: float) -> int | None:
    for s, a in zip(steps, acc):
        if a >= target:
            return int(s)
    return None


def _ratio(base: float, reach: float | None) -> float | None:
    """base / reach; None if never reached or if ``base`` is 0 (0/0, see the module docstring); reach 0: unbounded."""
    if reach is None or base == 0:
        return None
    return base / reach if reach else float("inf")


def _note(base: float) -> dict:
    """``{"speedup_note": UNDEFINED}`` when the baseline needed nothing to reach its level, else empty."""
    return {"speedup_note": UNDEFINED} if base == 0 else {}


def step_speedup(base_steps: Sequence[int], base_acc: Sequence[float], steps: Sequence[int], acc: Sequence[float]) -> dict:
    """Speed-up of (steps, acc) over the baseline curve, with the points it is computed from."""
    b_step, b_acc = best_point(base_steps, base_acc)
    reach = steps_to_reach(steps, acc, b_acc)
    return {"baseline_best_step": b_step, "baseline_best": b_acc, "steps_to_reach": reach,
            "speedup": _ratio(b_step, reach)} | _note(b_step)


def cost_speedup(base_steps: Sequence[int], base_acc: Sequence[float], base_cost: Sequence[float],
                 steps: Sequence[int], acc: Sequence[float], cost: Sequence[float], unit: str) -> dict:
    """Speed-up in a cumulative cost (``unit``: seconds, flops) of (steps, acc, cost) over the baseline; ``cost[i]``:
    cumulative by ``steps[i]`` (the points of ``step_speedup``, read in that cost)."""
    points = step_speedup(base_steps, base_acc, steps, acc)
    b_step, reach = points["baseline_best_step"], points["steps_to_reach"]
    b_cost = float(base_cost[list(base_steps).index(b_step)])
    spent = None if reach is None else float(cost[list(steps).index(reach)])
    return {"baseline_best_step": b_step, "baseline_best": points["baseline_best"], f"baseline_{unit}": b_cost,
            "steps_to_reach": reach, f"{unit}_to_reach": spent, "speedup": _ratio(b_cost, spent)} | _note(b_cost)


def wallclock_speedup(base_steps: Sequence[int], base_acc: Sequence[float], base_seconds: Sequence[float],
                      steps: Sequence[int], acc: Sequence[float], seconds: Sequence[float]) -> dict:
    """``cost_speedup`` in seconds."""
    return cost_speedup(base_steps, base_acc, base_seconds, steps, acc, seconds, "seconds")


def compute_speedup(base_steps: Sequence[int], base_acc: Sequence[float], base_flops: Sequence[float],
                    steps: Sequence[int], acc: Sequence[float], flops: Sequence[float]) -> dict:
    """``cost_speedup`` in FLOPs."""
    return cost_speedup(base_steps, base_acc, base_flops, steps, acc, flops, "flops")


def gain_speedup(base_steps: Sequence[int], base_acc: Sequence[float], steps: Sequence[int], acc: Sequence[float],
                 fraction: float) -> dict:
    """Speed-up at ``fraction`` of the baseline's gain (see the module docstring), with its level and steps."""
    if problems := config_problems({"gain_fraction": fraction}, {"gain_fraction": Fraction}):
        raise ValueError(problems[0])
    b_best_step, best = best_point(base_steps, base_acc)
    level = best if fraction == 1 else base_acc[0] + fraction * (best - base_acc[0])
    b_step = b_best_step if fraction == 1 else steps_to_reach(base_steps, base_acc, level)
    reach = steps_to_reach(steps, acc, level)
    return {"fraction": fraction, "level": float(level), "baseline_steps": b_step, "steps_to_reach": reach,
            "speedup": _ratio(b_step, reach)} | _note(b_step)
