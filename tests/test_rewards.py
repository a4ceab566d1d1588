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
        ("12 + 7 = 19.", "19", 0.0),  # a work line alone states no answer (the tiny policy's unboxed habit)
        ("\\boxed{19", "19", 0.0),  # unclosed
        ("\\boxed{1 9}", "19", 0.0),  # not an integer
        ("\\boxed{019}", "19", 1.0),  # integer value, not string
        ("", "19", 0.0),
        # what a careful grader accepts from an instruct model
        ("7 + 8 = 15. The answer is 15.", "15", 1.0),
        ("So the answer is 42 coins.", "42", 1.0),  # a trailing unit
        ("The final answer is: $1,234$", "1234", 1.0),
        ("\\boxed{1,234}", "1234", 1.0),  # thousands separators
        ("\\boxed{1{,}000}", "1000", 1.0),
        ("\\boxed{\\text{15 apples}}", "15", 1.0),
        ("\\boxed{\\$12}", "12", 1.0),
        ("The answer is 15. Checking again, the answer is 16.", "16", 1.0),  # the last statement counts
        ("The answer is \\boxed{10}.", "10", 1.0),
        # and stays strict about anything else
        ("The answer is 14.", "15", 0.0),
        ("The answer is 15 or 16.", "15", 0.0),  # two numbers
        ("\\boxed{15.5}", "15", 0.0),  # a decimal
        ("\\boxed{1,23}", "123", 0.0),  # not a thousands group
        ("\\boxed{15} so the answer is 16.", "16", 0.0),  # a box is the answer when there is one
        ("The answer is fifteen.", "15", 0.0),
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


def test_a_verifier_failure_is_not_a_wrong_answer(monkeypatch):
    """math-verify timing out (a stand-in for its own TimeoutException: nothing here can make sympy hang on cue) is a
    ``VerifierError`` for verl (which then counts the group as failed) and a NaN for the collection and evaluation
    (dropped and counted), never a 0.0; a response math-verify cannot parse is a wrong answer."""
    import math

    import math_verify
    from math_verify.errors import TimeoutException

    from cropi_verl.rewards import VerifierError, score_or_nan

    assert compute_score("gsm8k", "\\boxed{\\frac{1}{", "10") == 0.0

    def timed_out(*args, **kwargs):
        raise TimeoutException("Operation timed out!")

    monkeypatch.setattr(math_verify, "parse", timed_out)
    with pytest.raises(VerifierError, match="math-verify timed out"):
        compute_score("gsm8k", "\\boxed{10}", "10")
    assert math.isnan(score_or_nan("gsm8k", "\\boxed{10}", "10"))
    assert score_or_nan("cropi_toy/add", "\\boxed{10}", "10") == 1.0  # the toy check does not use math-verify
