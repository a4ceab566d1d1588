"""The step-level speed-up: how much sooner a method reaches an accuracy level of the baseline's curve.

For a curve of (step, accuracy) points: ``best(baseline)`` = its highest accuracy and the first step it is reached;
``steps_to_reach(curve, a)`` = the first step whose accuracy is >= a (None if never).

- The speed-up (the target's definition): speed-up = steps_baseline_best / steps_to_reach(method, best(baseline))
  (None if never reached).
- At a fraction f of the baseline's gain: the level a_f = a_0 + f (best - a_0), a_0 = the baseline's first point,
  and speed-up_f = steps_to_reach(baseline, a_f) / steps_to_reach(method, a_f). With f < 1 it does not hinge on the
  single highest, noisiest point of the baseline's curve; f = 1 is the speed-up above.
"""

from __future__ import annotations

from typing import Sequence

from cropi_verl.utils.config_rules import Fraction, config_problems


def best_point(steps: Sequence[int], acc: Sequence[float]) -> tuple[int, float]:
    """(first step of the maximum, the maximum)."""
    i = max(range(len(acc)), key=lambda j: (acc[j], -steps[j]))
    return int(steps[i]), float(acc[i])


def steps_to_reach(steps: Sequence[int], acc: Sequence[float], target: float) -> int | None:
    for s, a in zip(steps, acc):
        if a >= target:
            return int(s)
    return None


def _ratio(base_step: int, reach: int | None) -> float | None:
    """base_step / reach; None if never reached; reached at step 0: 1 if the baseline was too, else unbounded."""
    if reach is None:
        return None
    if reach == 0:
        return 1.0 if base_step == 0 else float("inf")
    return base_step / reach


def step_speedup(base_steps: Sequence[int], base_acc: Sequence[float], steps: Sequence[int], acc: Sequence[float]) -> dict:
    """Speed-up of (steps, acc) over the baseline curve, with the points it is computed from."""
    b_step, b_acc = best_point(base_steps, base_acc)
    reach = steps_to_reach(steps, acc, b_acc)
    return {"baseline_best_step": b_step, "baseline_best": b_acc, "steps_to_reach": reach, "speedup": _ratio(b_step, reach)}


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
            "speedup": _ratio(b_step, reach)}
