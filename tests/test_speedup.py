"""The speed-up in steps (at full data's best and at a fraction of its gain) and in seconds, on hand-built curves."""

import pytest

from cropi_verl.eval.speedup import UNDEFINED, gain_speedup, step_speedup, wallclock_speedup

STEPS = [0, 5, 10, 15, 20]
# the baseline climbs slowly to its best 0.30 at step 20; 90% of its gain (0.10 -> 0.30) is 0.28, first reached at 15
BASE = [0.10, 0.15, 0.20, 0.28, 0.30]


def test_speedup_at_the_baseline_best():
    fast = [0.10, 0.25, 0.31, 0.29, 0.30]  # reaches 0.30 at step 10
    assert step_speedup(STEPS, BASE, STEPS, fast) == {"baseline_best_step": 20, "baseline_best": 0.30,
                                                       "steps_to_reach": 10, "speedup": 2.0}
    plateau = [0.10, 0.28, 0.29, 0.29, 0.29]  # makes 95% of the gain by step 5, never the best itself
    assert step_speedup(STEPS, BASE, STEPS, plateau)["speedup"] is None


def test_speedup_at_a_fraction_of_the_gain():
    plateau = [0.10, 0.28, 0.29, 0.29, 0.29]
    out = gain_speedup(STEPS, BASE, STEPS, plateau, 0.9)
    assert out["level"] == pytest.approx(0.28)
    assert (out["baseline_steps"], out["steps_to_reach"], out["speedup"]) == (15, 5, 3.0)
    half = gain_speedup(STEPS, BASE, STEPS, [0.10, 0.12, 0.22, 0.25, 0.26], 0.5)  # level 0.20: both at step 10
    assert (half["baseline_steps"], half["steps_to_reach"], half["speedup"]) == (10, 10, 1.0)
    assert gain_speedup(STEPS, BASE, STEPS, [0.1] * 5, 0.9)["speedup"] is None


def test_full_gain_is_the_speedup_at_the_best_even_where_rounding_would_overshoot():
    base, fast = [0.1, 0.2, 0.3], [0.1, 0.3, 0.3]  # 0.1 + 1.0 * (0.3 - 0.1) = 0.30000000000000004 > 0.3
    assert gain_speedup([0, 5, 10], base, [0, 5, 10], fast, 1.0)["speedup"] == 2.0
    assert step_speedup([0, 5, 10], base, [0, 5, 10], fast)["speedup"] == 2.0


@pytest.mark.parametrize("bad", [0, -0.5, 1.5])
def test_gain_fraction_outside_zero_one_is_refused(bad):
    with pytest.raises(ValueError, match=r"expected a number in \(0, 1\]"):
        gain_speedup(STEPS, BASE, STEPS, BASE, bad)


def test_wallclock_speedup_counts_training_boundaries_and_collection():
    # full: 1.5 s per step, no selection, no collection -> its best (0.30, step 20) at 30 s
    full_seconds = [0.0, 7.5, 15.0, 22.5, 30.0]
    # cropi: 6 s of offline collection, a 4 s influence pass at step 0 and at step 10, 1 s per step (a 10% subset)
    # -> by step 10: 6 + 4 + 10 * 1 = 20 s (the step-10 boundary comes after the step-10 eval)
    cropi_seconds = [6.0, 6.0 + 4 + 5, 6.0 + 4 + 10, 6.0 + 8 + 15, 6.0 + 8 + 20]
    fast = [0.10, 0.25, 0.31, 0.29, 0.30]  # reaches 0.30 at step 10: 2x in steps, 30 / 20 = 1.5x in seconds
    out = wallclock_speedup(STEPS, BASE, full_seconds, STEPS, fast, cropi_seconds)
    assert out == {"baseline_best_step": 20, "baseline_best": 0.30, "baseline_seconds": 30.0, "steps_to_reach": 10,
                   "seconds_to_reach": 20.0, "speedup": 1.5}
    slow = [0.10, 0.12, 0.20, 0.30, 0.30]  # reaches it at step 15: 29 s -> 30 / 29
    assert wallclock_speedup(STEPS, BASE, full_seconds, STEPS, slow, cropi_seconds)["speedup"] == pytest.approx(30 / 29)
    assert wallclock_speedup(STEPS, BASE, full_seconds, STEPS, [0.1] * 5, cropi_seconds)["speedup"] is None


def test_baseline_best_at_step_zero_is_undefined_not_one():
    flat = [0.30, 0.20, 0.25, 0.30, 0.28]  # full's best is its start: no training to speed up
    other = [0.30, 0.10, 0.10, 0.10, 0.10]
    for out in (step_speedup(STEPS, flat, STEPS, other), gain_speedup(STEPS, flat, STEPS, other, 0.9),
                wallclock_speedup(STEPS, flat, [0, 10, 20, 30, 40], STEPS, other, [6, 9, 12, 15, 18])):
        assert out["speedup"] is None and out["speedup_note"] == UNDEFINED
    assert "speedup_note" not in step_speedup(STEPS, BASE, STEPS, other)
