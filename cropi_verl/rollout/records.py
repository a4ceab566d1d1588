"""The offline rollout record format: one parquet row per prompt, keyed by the prompt's row id.

Columns:

- ``prompt_id`` (int64, = the prompt parquet's ``extra_info.index``), ``data_source``, ``split``, ``ground_truth``
- ``prompt_token_ids``: list[int], the chat-templated prompt
- per response k (lists of length K): ``response_ids`` (list[int], ends with EOS unless truncated),
  ``response_text``, ``reward`` (float; NaN when flagged), ``logprobs`` (beta's log-prob of each response
  token, temperature 1), ``length``, ``truncated`` (hit the token limit), ``flag`` ("" ok, "empty" no tokens
  before EOS, "nan_reward" the scorer returned a non-finite value)
- per-prompt summaries: ``n_valid`` (unflagged responses), ``pass_rate`` (mean reward of unflagged responses,
  NaN if none), ``reward_std`` (population std of those rewards)

Flagged responses are kept in the file for inspection but never scored or used in a gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from cropi_verl.influence.gradients import PromptRollouts

RECORD_COLUMNS = (
    "prompt_id", "data_source", "split", "ground_truth", "prompt_token_ids", "response_ids", "response_text",
    "reward", "logprobs", "length", "truncated", "flag", "n_valid", "pass_rate", "reward_std",
)


@dataclass
class Response:
    token_ids: list[int]
    text: str
    logprobs: list[float]
    truncated: bool


def make_row(
    prompt_id: int, data_source: str, split: str, ground_truth: str, prompt_token_ids: Sequence[int],
    responses: Sequence[Response], rewards: Sequence[float], eos_id: int | None,
) -> dict[str, Any]:
    """One record; flags empty generations and non-finite rewards and summarises the unflagged ones."""
    flags, clean = [], []
    for resp, r in zip(responses, rewards):
        body = [t for t in resp.token_ids if t != eos_id]
        flag = "empty" if not body else ("nan_reward" if not math.isfinite(r) else "")
        flags.append(flag)
        clean.append(float(r) if not flag else float("nan"))
    valid = [r for r in clean if not math.isnan(r)]
    return {
        "prompt_id": int(prompt_id),
        "data_source": data_source,
        "split": split,
        "ground_truth": str(ground_truth),
        "prompt_token_ids": list(map(int, prompt_token_ids)),
        "response_ids": [list(map(int, r.token_ids)) for r in responses],
        "response_text": [r.text for r in responses],
        "reward": clean,
        "logprobs": [list(map(float, r.logprobs)) for r in responses],
        "length": [len(r.token_ids) for r in responses],
        "truncated": [bool(r.truncated) for r in responses],
        "flag": flags,
        "n_valid": len(valid),
        "pass_rate": float(np.mean(valid)) if valid else float("nan"),
        "reward_std": float(np.std(valid)) if valid else float("nan"),
    }


def to_prompt_rollouts(frame: pd.DataFrame) -> list[PromptRollouts]:
    """The unflagged responses of each record, as POPI inputs (order of ``frame``)."""
    out = []
    for row in frame.itertuples(index=False):
        keep = [i for i, f in enumerate(row.flag) if not f]
        out.append(
            PromptRollouts(
                prompt_id=int(row.prompt_id),
                prompt_ids=list(row.prompt_token_ids),
                responses=[list(row.response_ids[i]) for i in keep],
                behaviour_logprobs=[list(row.logprobs[i]) for i in keep],
                rewards=[float(row.reward[i]) for i in keep],
            )
        )
    return out
