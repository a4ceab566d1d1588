"""Reward correctness on hand-written answers: right, wrong, malformed."""

from __future__ import annotations

import pytest

from cropi_verl.rewards import compute_score


@pytest.mark.parametrize(
    "response, truth, expected",
    [
        ("12 + 7 = 19. \\boxed{19}", "19", 1.0),
        ("\\boxed{ 19 }", "19", 1.0),
        ("5 - 9 = -4. \\boxed{-4}", "-4", 1.0),
        ("12 + 7 = 19. \\boxed{18}", "19", 0.0),  # wrong
        ("\\boxed{19} then \\boxed{20}", "19", 0.0),  # the last box counts
        ("\\boxed{20} then \\boxed{19}", "19", 1.0),
        ("12 + 7 = 19.", "19", 0.0),  # no box
        ("\\boxed{19", "19", 0.0),  # unclosed
        ("\\boxed{1 9}", "19", 0.0),  # not an integer
        ("\\boxed{019}", "19", 1.0),  # integer value, not string
        ("", "19", 0.0),
    ],
)
def test_toy_reward(response, truth, expected):
    assert compute_score("cropi_toy/add", response, truth) == expected


@pytest.mark.parametrize(
    "source, response, truth, expected",
    [
        ("gsm8k", "So she earned $10. The answer is \\boxed{10}.", "10", 1.0),
        ("gsm8k", "The answer is \\boxed{11}.", "10", 0.0),
        ("math", "Thus the sum is $\\boxed{\\frac{3}{4}}$.", "\\frac{3}{4}", 1.0),
        ("math", "Thus the sum is $\\boxed{0.75}$.", "\\frac{3}{4}", 1.0),  # math-verify: equivalent forms
        ("math500", "no final answer at all", "5", 0.0),
    ],
)
def test_real_sources_route_to_math_verify(source, response, truth, expected):
    assert compute_score(source, response, truth) == expected


def test_other_sources_fall_back_to_verl_default():
    # verl routes math_dapo to its DAPO scorer: "Answer: <x>" format, +1 right / -1 wrong
    assert compute_score("math_dapo", "so Answer: 72", "72") == 1.0
    assert compute_score("math_dapo", "so Answer: 71", "72") == -1.0
    with pytest.raises(NotImplementedError):
        compute_score("no_such_source", "\\boxed{1}", "1")
