"""The offline rollout record format: one parquet row per prompt, keyed by the prompt's row id.

Columns:

- ``prompt_id`` (int64, = the prompt parquet's ``extra_info.index``), ``data_source``, ``split``, ``ground_truth``
- ``prompt_token_ids``: list[int], the chat-templated prompt
- per response k (lists of length K): ``response_ids`` (list[int], ends with a stop id unless truncated),
  ``response_text``, ``reward`` (float; NaN when flagged), ``logprobs`` (beta's log-prob of each response
  token, temperature 1, by the influence pass's fp32 forward: ``rollout.hf_backend.behaviour_logprobs``),
  ``length``, ``truncated`` (hit the token limit), ``flag`` ("" ok, "empty" no token but stop ids, "nan_reward"
  the scorer returned a non-finite value)
- per-prompt summaries: ``n_valid`` (unflagged responses), ``pass_rate`` (mean reward of unflagged responses,
  NaN if none), ``reward_std`` (population std of those rewards)

The exclusion rule (``response_flags``, one place): a response is usable only if it is unflagged, has a token
other than the policy's stop ids and a finite reward (not NaN, inf or null); any other response is excluded one by one, whatever its
stored flag says, and the group statistics (``n_valid``, ``pass_rate``, the advantages' mean and std, K) are
computed over the usable responses alone. ``usable_responses`` is what preflight counts and scoring converts (``to_prompt_rollouts``).
Excluded responses are kept in the file for inspection but never scored or used in a gradient. Token ids and
log-probs are held as int64 / float64 numpy arrays (``list<list<int64>>`` / ``list<list<double>>`` in parquet),
never as per-token Python scalars.

Every reader of a rollouts file goes through ``read_rollouts``: the file is validated as strictly as a prompts
file (``validate_rollouts``: ``<file>: row N: <key>: <reason>``) and every response is judged by the rule (with the
policy's stop ids when the reader has them), so an unflagged empty response or non-finite reward is flagged there.
Values are checked against their domain before any gradient (``RolloutLimits``): log-probs finite and <= 0, finite
rewards in the declared range ([0, 1] for verifiable rewards), and, given the model that will score them, token ids
in [0, vocab_size) and prompt + response within max_position_embeddings.
"""

from __future__ import annotations

import math
import numbers
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from cropi_verl.data.verl_format import DataValidationError, RowProblem, read_parquet
from cropi_verl.influence.gradients import PromptRollouts, is_zero_advantage

RECORD_COLUMNS = (
    "prompt_id", "data_source", "split", "ground_truth", "prompt_token_ids", "response_ids", "response_text",
    "reward", "logprobs", "length", "truncated", "flag", "n_valid", "pass_rate", "reward_std",
)
PER_RESPONSE = ("response_ids", "response_text", "reward", "logprobs", "length", "truncated", "flag")
FLAGS = ("", "empty", "nan_reward")
MAX_LISTED = 5  # problems a rollouts-file error lists (then "... and N more")
LOGPROB_ROUNDING = 1e-4  # a log-prob above 0 by more than float rounding is no log-prob


@dataclass(frozen=True)
class RolloutLimits:
    """The domain of a rollouts file's values (module docstring): the model's ``vocab_size`` and
    ``max_positions`` (None: not checked), and the rewards' ``reward_range`` (inclusive)."""

    vocab_size: int | None = None
    max_positions: int | None = None
    reward_range: tuple[float, float] = (0.0, 1.0)

    @classmethod
    def of_model(cls, model: str, reward_range: Sequence[float] = (0.0, 1.0)) -> "RolloutLimits":
        """The limits of the model at ``model`` (a directory or hub id); without a readable config, rewards only."""
        from transformers import AutoConfig

        low, high = reward_range
        try:
            config = AutoConfig.from_pretrained(model)
        except Exception:  # noqa: BLE001 - a hub id not downloaded: the token checks wait for the model
            return cls(reward_range=(float(low), float(high)))
        return cls(config.vocab_size, getattr(config, "max_position_embeddings", None), (float(low), float(high)))


@dataclass
class Response:
    token_ids: Sequence[int]  # a list or an integer array
    text: str
    logprobs: Sequence[float] | None  # None until computed (rollout.hf_backend.with_behaviour_logprobs)
    truncated: bool


StopIds = Sequence[int] | None  # the policy's stop ids (``models.special_tokens.TokenRule.stop_ids``), None: unknown


def _is_empty(tokens: np.ndarray, stop_ids: StopIds) -> bool:
    """No token other than a stop id."""
    return not len(tokens) or (stop_ids is not None and bool(np.isin(tokens, np.atleast_1d(np.asarray(stop_ids))).all()))


def response_flag(tokens: Sequence[int], reward: float, stop_ids: StopIds) -> str:
    """The rule for one response: "empty" (no token other than a stop id), "nan_reward" (a reward that is null or
    not finite) or ""."""
    if _is_empty(np.asarray(tokens), stop_ids):
        return "empty"
    return "" if reward is not None and math.isfinite(reward) else "nan_reward"


def response_flags(response_ids: Sequence, rewards: Sequence[float], flags: Sequence[str],
                   stop_ids: StopIds = None) -> list[str]:
    """Each response's flag: its stored flag, else the rule's (``response_flag``; ``stop_ids`` None: only a
    response without tokens is empty)."""
    return [f or response_flag(t, r, stop_ids) for t, r, f in zip(response_ids, rewards, flags)]


def usable_responses(response_ids: Sequence, rewards: Sequence[float], flags: Sequence[str]) -> list[int]:
    """Positions of a record's usable responses, the ones scored and used in gradients (module docstring)."""
    return [i for i, f in enumerate(response_flags(response_ids, rewards, flags)) if not f]


def _judged(response_ids: Sequence, rewards: Sequence[float], flags: Sequence[str], stop_ids: StopIds) -> dict:
    """A record's ``reward`` (NaN when flagged), ``flag`` and summary columns under the rule."""
    flags = response_flags(response_ids, rewards, flags, stop_ids)
    clean = [float("nan") if f else float(r) for r, f in zip(rewards, flags)]
    valid = [r for r, f in zip(clean, flags) if not f]
    return {
        "reward": clean,
        "flag": flags,
        "n_valid": len(valid),
        "pass_rate": float(np.mean(valid)) if valid else float("nan"),
        "reward_std": float(np.std(valid)) if valid else float("nan"),
    }


def make_row(
    prompt_id: int, data_source: str, split: str, ground_truth: str, prompt_token_ids: Sequence[int],
    responses: Sequence[Response], rewards: Sequence[float], stop_ids: StopIds,
) -> dict[str, Any]:
    """One record; flags empty generations and non-finite rewards and summarises the unflagged ones."""
    ids = [np.asarray(r.token_ids, dtype=np.int64) for r in responses]
    return {
        "prompt_id": int(prompt_id),
        "data_source": data_source,
        "split": split,
        "ground_truth": str(ground_truth),
        "prompt_token_ids": np.asarray(prompt_token_ids, dtype=np.int64),
        "response_ids": ids,
        "response_text": [r.text for r in responses],
        "logprobs": [np.asarray(r.logprobs, dtype=np.float64) for r in responses],
        "length": [len(t) for t in ids],
        "truncated": [bool(r.truncated) for r in responses],
        **_judged(ids, rewards, [""] * len(ids), stop_ids),
    }


def excluded_responses(frame: pd.DataFrame) -> int:
    """How many responses of ``frame`` are excluded (not ``usable_responses``)."""
    return sum(len(r.flag) - len(usable_responses(r.response_ids, r.reward, r.flag)) for r in frame.itertuples())


def zero_advantage(frame: pd.DataFrame) -> np.ndarray:
    """Per record: scoring skips it as zero-advantage (its usable rewards, ``usable_responses``, are all equal or
    fewer than two), so its POPI gradient is zero at any weights."""
    return np.array([is_zero_advantage([float(r.reward[i]) for i in usable_responses(r.response_ids, r.reward, r.flag)])
                     for r in frame.itertuples()], dtype=bool)


def to_prompt_rollouts(frame: pd.DataFrame) -> list[PromptRollouts]:
    """The usable responses of each record (``usable_responses``), as POPI inputs (order of ``frame``). Token ids and
    log-probs stay the file's int64 / float64 arrays (no per-token Python object is made: at 55k prompts x 8 x 800
    tokens that was gigabytes and minutes per pass; ``scripts/bench_pool_shipping.py``)."""
    out = []
    for row in frame.itertuples(index=False):
        keep = usable_responses(row.response_ids, row.reward, row.flag)
        out.append(
            PromptRollouts(
                prompt_id=int(row.prompt_id),
                prompt_ids=np.asarray(row.prompt_token_ids, dtype=np.int64),
                responses=[np.asarray(row.response_ids[i], dtype=np.int64) for i in keep],
                behaviour_logprobs=[np.asarray(row.logprobs[i], dtype=np.float64) for i in keep],
                rewards=[float(row.reward[i]) for i in keep],
            )
        )
    return out


def _is_list(x: Any) -> bool:
    return isinstance(x, (list, tuple)) or (isinstance(x, np.ndarray) and x.ndim == 1)


def _kind(x: Any, kinds: str) -> bool:
    """``x`` is a list of numbers of numpy dtype kinds ``kinds`` (an empty list always is)."""
    if not _is_list(x):
        return False
    try:
        a = np.asarray(x)
    except ValueError:  # ragged nesting
        return False
    return a.ndim == 1 and (len(a) == 0 or a.dtype.kind in kinds)


def _id_problem(tokens: np.ndarray, limits: RolloutLimits) -> str | None:
    """Why token ids ``tokens`` cannot index the model's embedding, or None."""
    if len(tokens) and (tokens.min() < 0 or (limits.vocab_size is not None and tokens.max() >= limits.vocab_size)):
        bad = tokens[(tokens < 0) | (tokens >= (limits.vocab_size or np.iinfo(np.int64).max))][0]
        return (f"token id {int(bad)} is outside the policy's vocabulary [0, {limits.vocab_size}) (collected with "
                "another tokenizer?)")
    return None


def _response_problems(rec: dict, limits: RolloutLimits) -> list[tuple[str, str]]:
    """(key, reason) for the per-response lists of one record: equal lengths, token ids (in the vocabulary, within
    the positions with the prompt), log-probs (finite, <= 0), rewards (in the range), flags."""
    lengths = {c: len(rec[c]) if _is_list(rec[c]) else None for c in PER_RESPONSE}
    if None in lengths.values() or len(set(lengths.values())) > 1:
        return [("responses", f"per-response lists of unequal lengths or not lists: {lengths}")]
    out = []
    n_prompt = len(rec["prompt_token_ids"]) if _is_list(rec["prompt_token_ids"]) else 0
    for k, (tokens, lps) in enumerate(zip(rec["response_ids"], rec["logprobs"])):
        if not _kind(tokens, "iu"):
            out.append((f"response_ids[{k}]", "expected a list of token ids"))
            continue
        if not _kind(lps, "iuf") or len(lps) != len(tokens):
            out.append((f"logprobs[{k}]", f"expected {len(tokens)} log-probs (one per response token), got "
                                          f"{np.asarray(lps).size}"))
            continue
        ids, lp = np.asarray(tokens, dtype=np.int64), np.asarray(lps, dtype=np.float64)
        if problem := _id_problem(ids, limits):
            out.append((f"response_ids[{k}]", problem))
        if limits.max_positions is not None and n_prompt + len(ids) > limits.max_positions:
            out.append((f"response_ids[{k}]", f"prompt + response = {n_prompt} + {len(ids)} tokens, beyond the "
                                              f"policy's max_position_embeddings {limits.max_positions}"))
        if len(lp) and not (np.isfinite(lp).all() and lp.max() <= LOGPROB_ROUNDING):
            bad = lp[~np.isfinite(lp) | (lp > LOGPROB_ROUNDING)][0]
            out.append((f"logprobs[{k}]", f"log-prob {float(bad)}: expected finite values <= 0"))
    if not all(r is None or (isinstance(r, numbers.Real) and not isinstance(r, bool)) for r in rec["reward"]):
        out.append(("reward", f"expected numbers (or nulls), got {list(rec['reward'])!r}"))
    else:
        low, high = limits.reward_range
        outside = [r for r in rec["reward"] if r is not None and math.isfinite(r) and not low <= r <= high]
        if outside:
            out.append(("reward", f"reward {float(outside[0])} outside [{low:g}, {high:g}] (verifiable rewards are 0 or 1; "
                                  "declare another range with cropi.reward_range)"))
    bad = [f for f in rec["flag"] if f not in FLAGS]
    if bad:
        out.append(("flag", f"expected flags in {list(FLAGS)}, got {bad!r}"))
    return out


def _row_problems(path: str, row: int, rec: dict, limits: RolloutLimits) -> list[RowProblem]:
    """Every problem of one record (``validate_rollouts``)."""
    out = []
    if not isinstance(rec["prompt_id"], numbers.Integral) or isinstance(rec["prompt_id"], bool):
        out.append(("prompt_id", f"expected an integer prompt id, got {rec['prompt_id']!r}"))
    if not _kind(rec["prompt_token_ids"], "iu") or not len(rec["prompt_token_ids"]):
        out.append(("prompt_token_ids", "expected a non-empty list of token ids"))
    elif problem := _id_problem(np.asarray(rec["prompt_token_ids"], dtype=np.int64), limits):
        out.append(("prompt_token_ids", problem))
    return [RowProblem(path, row, k, why) for k, why in out + _response_problems(rec, limits)]


def validate_rollouts(frame: pd.DataFrame, path: str = "<frame>",
                      limits: RolloutLimits = RolloutLimits()) -> list[RowProblem]:
    """Every problem of a rollouts table: missing columns, else per record wrong types or unequal per-response
    lists, a log-prob list unlike its response's length, values outside ``limits``, an unknown flag, and duplicate
    prompt ids."""
    missing = [c for c in RECORD_COLUMNS if c not in frame.columns]
    if missing:
        return [RowProblem(path, None, "columns", f"missing {', '.join(missing)} (not an offline-rollouts file: "
                                                  "scripts/collect_rollouts.py writes them)")]
    problems = [p for row, rec in enumerate(frame.to_dict("records")) for p in _row_problems(path, row, rec, limits)]
    ids = [(row, int(i)) for row, i in enumerate(frame["prompt_id"].tolist()) if isinstance(i, numbers.Integral)]
    counts = Counter(i for _, i in ids)
    return problems + [RowProblem(path, row, "prompt_id", f"duplicate id {i} ({counts[i]} rows)")
                       for row, i in ids if counts[i] > 1]


def read_rollouts(path: str | Path, stop_ids: StopIds = None, limits: RolloutLimits = RolloutLimits()) -> pd.DataFrame:
    """A rollouts parquet, validated (``validate_rollouts`` with ``limits``; ``DataValidationError`` in one line
    otherwise), with every response judged by the rule (``response_flags`` with the policy's ``stop_ids``) and the
    summaries recomputed."""
    path = Path(path)
    frame = read_parquet(path, "no such rollouts parquet (collect it with scripts/collect_rollouts.py)")
    problems = validate_rollouts(frame, str(path), limits)
    if problems:
        more = f"; ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise DataValidationError("; ".join(str(p) for p in problems[:MAX_LISTED]) + more)
    judged = [_judged(r.response_ids, r.reward, r.flag, stop_ids) for r in frame.itertuples()]
    return frame.assign(**pd.DataFrame(judged, index=frame.index))
