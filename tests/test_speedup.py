"""The step-level speed-up, at full data's best and at a fraction of its gain, on hand-built curves."""

import pytest

from cropi_verl.eval.speedup import gain_speedup, step_speedup

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
