"""Verifiable rewards with verl's ``compute_score`` signature.

Routing by ``data_source``:

- ``cropi_toy/<family>`` (the embedded task): 1.0 if the response's answer is the integer ground truth, else 0.0.
  The answer is the last ``\\boxed{}``'s content, else what a final "the answer is ..." states, read as a careful
  grader reads an integer: thousands separators, ``\\text{}``, ``$``, a trailing unit in words and a final period
  are allowed (``toy_answer``); a fraction, a decimal, two numbers or a work line alone are no answer.
- every real math source this project prepares (GSM8K, MATH, DeepScaleR, MATH500, AIME24, AMC23,
  Gaokao2023en, OlympiadBench): ``math_score``, the math-verify library's ``parse`` and ``verify`` against
  ``\\boxed{ground_truth}`` (the check the paper's code and verl's ``math_verify`` scorer run), called in process.
- anything else: ``verl.utils.reward_score.default_compute_score``.

A verifier failure is not a wrong answer. verl's ``math_verify.compute_score`` runs math-verify in a spawned process
pool with a 30 s timeout and returns 0.0 when the pool breaks or times out, which a busy host does at start-up (seen
on verl's CPU trainer: a first validation of 0.0 on every set whose responses math-verify scores 0.11 in process).
``math_score`` raises ``VerifierError`` instead when math-verify times out: verl then counts the group as failed
(``cropi/failed_samples``), and the collection and evaluation record a NaN reward (``score_or_nan``), which
they drop and count. Its timeout uses ``signal.alarm`` (math-verify's own), so it applies in a main thread only;
verl's reward workers call the scorer from a thread pool, where math-verify runs without one.
"""

from __future__ import annotations

import math
import re
import threading
from typing import Any

from cropi_verl.data.toy_task import DATA_SOURCE_PREFIX

MATH_VERIFY_SOURCES = frozenset(
    {
        "openai/gsm8k",
        "gsm8k",
        "lighteval/MATH",
        "DigitalLearningGmbH/MATH-lighteval",
        "math",
        "HuggingFaceH4/MATH-500",
        "math500",
        "agentica-org/DeepScaleR-Preview-Dataset",
        "deepscaler",
        "aime24",
        "amc23",
        "gaokao2023en",
        "olympiadbench",
    }
)

VERIFY_TIMEOUT_S = 10  # math-verify's parse and verify, each (main thread only: module docstring)


class VerifierError(RuntimeError):
    """The verifier could not decide (math-verify timed out): neither a right nor a wrong answer."""


# an integer as a careful grader reads it: an optional sign, digits or thousands groups (1,234 or 1{,}234), then
# optionally a unit in words ("15 apples"); \text{}/\mbox{}, $ and \$ around it, and a final period, removed first
_INTEGER = re.compile(r"(-?(?:\d{1,3}(?:,\d{3})+|\d+))(?:\s+[A-Za-z][A-Za-z ]*)?")
_WRAPPERS = re.compile(r"\\(?:text|mbox|mathrm)\{([^{}]*)\}")
_ANSWER_IS = re.compile(r"\banswer is:?\s*(.*?)(?:\.\s|\.?$|\n)", re.IGNORECASE)


def stated_integer(text: str) -> int | None:
    """The integer ``text`` states (``_INTEGER``, after the wrappers are removed), None for anything else (a
    fraction, a decimal, two numbers, an expression)."""
    text = _WRAPPERS.sub(r"\1", text).replace("{,}", ",").replace("\\$", "").replace("$", "").replace("\\ ", " ")
    m = _INTEGER.fullmatch(text.strip().rstrip(".").strip())
    return int(m.group(1).replace(",", "")) if m else None


def toy_answer(solution_str: str) -> int | None:
    """The embedded task's answer in a response: the content of its last ``\\boxed{}`` (verl's
    ``last_boxed_only_string``) when it has one, else what its last "the answer is ..." states; None when neither
    states an integer. A work line alone (``7 + 8 = 15.``) states no answer."""
    from verl.utils.reward_score.math_reward import last_boxed_only_string, remove_boxed

    if "\\boxed" in solution_str:
        box = last_boxed_only_string(solution_str)
        return stated_integer(remove_boxed(box)) if box and box.startswith("\\boxed{") else None
    said = _ANSWER_IS.findall(solution_str)
    return stated_integer(said[-1]) if said else None


def toy_score(solution_str: str, ground_truth: str) -> float:
    """1.0 iff the response's answer (``toy_answer``) is the integer ``ground_truth``."""
    return float(toy_answer(solution_str) == int(ground_truth))


def math_score(solution_str: str, ground_truth: str) -> float:
    """1.0 iff math-verify finds an answer of ``solution_str`` equal to ``\\boxed{ground_truth}``, else 0.0 (no
    answer found, or a parse error of the response: a wrong answer); ``VerifierError`` when math-verify times out."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
    from math_verify.errors import TimeoutException

    timeout = VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    try:
        gold = parse("\\boxed{" + str(ground_truth) + "}", (LatexExtractionConfig(),), parsing_timeout=timeout,
                     raise_on_error=True)
        pred = parse(solution_str, (ExprExtractionConfig(), LatexExtractionConfig()), parsing_timeout=timeout,
                     raise_on_error=True)
        return float(bool(gold and pred) and verify(gold, pred, timeout_seconds=timeout, raise_on_error=True))
    except TimeoutException as e:
        raise VerifierError(f"math-verify timed out ({e})") from None
    except Exception:  # noqa: BLE001 - math-verify's own parse or comparison error on this response: no answer
        return 0.0


def score_or_nan(data_source: str, solution_str: str, ground_truth: str, extra_info: dict | None = None) -> float:
    """``compute_score``, with a verifier failure as NaN: the offline collection and the evaluation drop such a
    response and count it (``rollout.records.usable_responses``)."""
    try:
        return compute_score(data_source, solution_str, ground_truth, extra_info)
    except VerifierError:
        return math.nan


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: str,
    extra_info: dict[str, Any] | None = None,
    **kwargs: Any,
) -> float:
    """verl-compatible reward: routes by ``data_source`` (see the module docstring).

    Non-finite scores from a delegated scorer are returned as they are; callers flag them (never train on them).
    """
    if data_source == DATA_SOURCE_PREFIX or data_source.startswith(DATA_SOURCE_PREFIX + "/"):
        return toy_score(solution_str, ground_truth)
    if data_source in MATH_VERIFY_SOURCES:
        return math_score(solution_str, str(ground_truth))
    from verl.utils.reward_score import default_compute_score

    res = default_compute_score(data_source, solution_str, ground_truth, extra_info)
    return float(res["score"] if isinstance(res, dict) else res)
