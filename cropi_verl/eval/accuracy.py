"""avg@k accuracy of an HF policy on a verl-format frame.

avg@k(row) = (1/k) sum_{j<k} r(y_j), y_j ~ pi(. | prompt) at the given temperature; a set's accuracy is the
mean over its rows. A response the verifier fails on (``rewards.score_or_nan``) is left out of its row's mean,
counted and logged (a row whose every response failed is NaN).
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from cropi_verl.rewards import score_or_nan
from cropi_verl.rollout.hf_backend import chat_prompt_ids, sample_chat

log = logging.getLogger(__name__)


def avg_at_k(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    frame: pd.DataFrame,
    k: int = 4,
    temperature: float = 1.0,
    max_new_tokens: int = 24,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
    max_batch_tokens: int | None = None,
) -> np.ndarray:
    """Per-row avg@k accuracy, shape ``[len(frame)]``; batch ``b`` is sampled with seed ``seed + b``. A batch holds
    ``batch_size`` prompts, fewer where ``max_batch_tokens`` bounds its ``k`` x prompts rows x (longest prompt of the
    frame + ``max_new_tokens``) positions (the KV cache ``generate`` holds; at least one prompt)."""
    model.eval()
    prompts = [chat_prompt_ids(tokenizer, list(p)) for p in frame["prompt"]]
    if max_batch_tokens and prompts:
        per_prompt = k * (max(map(len, prompts)) + max_new_tokens)
        batch_size = max(1, min(batch_size, max_batch_tokens // per_prompt))
    acc, failed = np.zeros(len(frame)), 0
    starts = range(0, len(prompts), batch_size)
    for b, s in enumerate(tqdm(starts, desc="eval", unit="batch", disable=not progress)):
        with torch.no_grad():
            gens = sample_chat(model, tokenizer, prompts[s : s + batch_size], k, temperature, 1.0, max_new_tokens, seed + b)
        for i, group in enumerate(gens):
            row = frame.iloc[s + i]
            gt = row["reward_model"]["ground_truth"]
            scores = np.array([score_or_nan(row["data_source"], tokenizer.decode(g.response_ids,
                                                                                  skip_special_tokens=True), gt)
                               for g in group])
            decided = scores[~np.isnan(scores)]
            failed += len(scores) - len(decided)
            acc[s + i] = float(decided.mean()) if len(decided) else float("nan")
    if failed:
        log.warning("the verifier failed on %d responses: left out of their prompts' accuracy (NaN where all failed)",
                    failed)
    return acc


def mean_by(frame: pd.DataFrame, acc: np.ndarray, key: str) -> dict[str, float]:
    """Mean accuracy grouped by ``extra_info[key]`` (e.g. ``family``), keys as strings, sorted."""
    groups: dict[str, list[float]] = defaultdict(list)
    for e, a in zip(frame["extra_info"], acc):
        groups[str(e[key])].append(float(a))
    return {g: float(np.mean(v)) for g, v in sorted(groups.items())}
