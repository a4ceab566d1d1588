"""The offline rollout record format: one parquet row per prompt, keyed by the prompt's row id.

Columns:

- ``prompt_id`` (int64, = the prompt parquet's ``extra_info.index``), ``data_source``, ``split``, ``ground_truth``
- ``prompt_token_ids``: list[int], the chat-templated prompt
- per response k (lists of length K): ``response_ids`` (list[int], ends with EOS unless truncated),
  ``response_text``, ``reward`` (float; NaN when flagged), ``logprobs`` (beta's log-prob of each response
  token, temperature 1, by the influence pass's fp32 forward: ``rollout.hf_backend.behaviour_logprobs``),
  ``length``, ``truncated`` (hit the token limit), ``flag`` ("" ok, "empty" no tokens before EOS, "nan_reward"
  the scorer returned a non-finite value)
- per-prompt summaries: ``n_valid`` (unflagged responses), ``pass_rate`` (mean reward of unflagged responses,
  NaN if none), ``reward_std`` (population std of those rewards)

Flagged responses are kept in the file for inspection but never scored or used in a gradient. Token ids and
log-probs are held as int64 / float64 numpy arrays (``list<list<int64>>`` / ``list<list<double>>`` in parquet),
never as per-token Python scalars.
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
    token_ids: Sequence[int]  # a list or an integer array
    text: str
    logprobs: Sequence[float] | None  # None until computed (rollout.hf_backend.with_behaviour_logprobs)
    truncated: bool


def _is_empty(tokens: np.ndarray, eos_id: int | None) -> bool:
    """No token other than EOS."""
    return not len(tokens) or (eos_id is not None and bool(np.all(tokens == eos_id)))


def make_row(
    prompt_id: int, data_source: str, split: str, ground_truth: str, prompt_token_ids: Sequence[int],
    responses: Sequence[Response], rewards: Sequence[float], eos_id: int | None,
) -> dict[str, Any]:
    """One record; flags empty generations and non-finite rewards and summarises the unflagged ones."""
    ids = [np.asarray(r.token_ids, dtype=np.int64) for r in responses]
    flags, clean = [], []
    for tokens, r in zip(ids, rewards):
        flag = "empty" if _is_empty(tokens, eos_id) else ("nan_reward" if not math.isfinite(r) else "")
        flags.append(flag)
        clean.append(float(r) if not flag else float("nan"))
    valid = [r for r in clean if not math.isnan(r)]
    return {
        "prompt_id": int(prompt_id),
        "data_source": data_source,
        "split": split,
        "ground_truth": str(ground_truth),
        "prompt_token_ids": np.asarray(prompt_token_ids, dtype=np.int64),
        "response_ids": ids,
        "response_text": [r.text for r in responses],
        "reward": clean,
        "logprobs": [np.asarray(r.logprobs, dtype=np.float64) for r in responses],
        "length": [len(t) for t in ids],
        "truncated": [bool(r.truncated) for r in responses],
        "flag": flags,
        "n_valid": len(valid),
        "pass_rate": float(np.mean(valid)) if valid else float("nan"),
        "reward_std": float(np.std(valid)) if valid else float("nan"),
    }


def unflagged(flags: Sequence[str]) -> list[int]:
    """Positions of a record's unflagged responses (the ones scored and used in gradients)."""
    return [i for i, f in enumerate(flags) if not f]


def to_prompt_rollouts(frame: pd.DataFrame) -> list[PromptRollouts]:
    """The unflagged responses of each record, as POPI inputs (order of ``frame``)."""
    out = []
    for row in frame.itertuples(index=False):
        keep = unflagged(row.flag)
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
