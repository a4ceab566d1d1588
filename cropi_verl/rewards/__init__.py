"""Verifiable rewards with verl's ``compute_score`` signature.

Routing by ``data_source``:

- ``cropi_toy/<family>`` (the embedded task): 1.0 if the last ``\\boxed{n}`` of the response is the integer
  ground truth, else 0.0 (a missing or non-integer box is 0.0).
- every real math source this project prepares (GSM8K, MATH, DeepScaleR, MATH500, AIME24, AMC23,
  Gaokao2023en, OlympiadBench): ``verl.utils.reward_score.math_verify`` (math-verify against
  ``\\boxed{ground_truth}``), the same check the paper's code uses.
- anything else: ``verl.utils.reward_score.default_compute_score``.
"""

from __future__ import annotations

import re
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

_BOXED_INT = re.compile(r"\\boxed\{\s*(-?\d+)\s*\}")
_BOXED_ANY = re.compile(r"\\boxed\{")


def toy_score(solution_str: str, ground_truth: str) -> float:
    """1.0 iff the last ``\\boxed{...}`` in ``solution_str`` holds exactly the integer ``ground_truth``."""
    if not _BOXED_ANY.search(solution_str):
        return 0.0
    last_box = solution_str[[m.start() for m in _BOXED_ANY.finditer(solution_str)][-1] :]
    m = _BOXED_INT.match(last_box)
    return float(m is not None and int(m.group(1)) == int(ground_truth))


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
        from verl.utils.reward_score import math_verify

        return float(math_verify.compute_score(solution_str, str(ground_truth)))
    from verl.utils.reward_score import default_compute_score

    res = default_compute_score(data_source, solution_str, ground_truth, extra_info)
    return float(res["score"] if isinstance(res, dict) else res)
