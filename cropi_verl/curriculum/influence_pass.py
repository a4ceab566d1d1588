"""One influence pass (the core of a stage boundary): projected POPI gradients of the pool and of each validation set at the current model,
cosine scores, and a selection. Used by ``scripts/score_influence.py`` and by the curriculum stage routine.

Features go to ``<store_root>/train`` and ``<store_root>/val_<name>`` feature stores whose manifest names the
model step and projector, so an interrupted pass resumes and a stale store is refused.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
import torch

from cropi_verl.influence.gradients import PopiConfig, PopiResult, validation_gradient
from cropi_verl.influence.pipeline import features_into_store
from cropi_verl.influence.projection import Projector
from cropi_verl.influence.scoring import influence_scores
from cropi_verl.influence.selection import SelectionPool, SelectionResult, select
from cropi_verl.influence.store import FeatureStore
from cropi_verl.rollout.records import to_prompt_rollouts

log = logging.getLogger(__name__)


@dataclass
class InfluencePass:
    scores: pd.DataFrame  # prompt_id, pass_rate, score_<set> (NaN = not scored), skipped reason
    selection: SelectionResult
    n_zero_advantage: int
    n_nonfinite: int


def pool_for_selection(train: pd.DataFrame, scores: Mapping[str, np.ndarray] | None = None) -> SelectionPool:
    """A selection pool over every prompt of the train rollouts (pass rate NaN -> 0: never solved/flagged)."""
    return SelectionPool(
        prompt_ids=train["prompt_id"].to_numpy(np.int64),
        scores=dict(scores or {}),
        pass_rate=np.nan_to_num(train["pass_rate"].to_numpy(np.float64), nan=0.0),
    )


def influence_pass(
    model: torch.nn.Module,
    train: pd.DataFrame,
    val: Mapping[str, pd.DataFrame],
    projector: Projector,
    store_root: str | Path,
    manifest: dict,
    pad_id: int,
    strategy: str = "cropi",
    fraction: float = 0.1,
    seed: int = 0,
    metric: str = "cosine",
    max_val_prompts: int = 100,
    shard_size: int = 256,
    popi: PopiConfig = PopiConfig(),
    progress: bool = False,
) -> InfluencePass:
    """Features, scores and selection at the current ``model`` (see the module docstring)."""
    root = Path(store_root)
    base = manifest | {"projector": projector.config(), "k": projector.k, "popi": asdict(popi)}
    val_grads = {}
    for name, frame in val.items():
        rng = np.random.default_rng(seed)
        rows = frame.iloc[np.sort(rng.permutation(len(frame))[:max_val_prompts])] if len(frame) > max_val_prompts else frame
        ids, feats, skipped = features_into_store(
            model, to_prompt_rollouts(rows), projector, FeatureStore(root / f"val_{name}", base | {"set": name}),
            pad_id, shard_size, popi, progress,
        )
        try:
            val_grads[name] = validation_gradient(PopiResult(ids.tolist(), feats))
        except ValueError as e:
            raise ValueError(f"validation set {name!r}: {e} ({len(rows)} prompts, "
                             f"{len(skipped.get('zero_advantage', []))} zero-advantage)") from None
    ids, feats, skipped = features_into_store(
        model, to_prompt_rollouts(train), projector, FeatureStore(root / "train", base | {"set": "train"}),
        pad_id, shard_size, popi, progress,
    )
    per_set = influence_scores(feats, val_grads, metric) if len(ids) else {n: torch.zeros(0) for n in val_grads}
    pos = {int(p): i for i, p in enumerate(train["prompt_id"])}
    table = pd.DataFrame({"prompt_id": train["prompt_id"].to_numpy(np.int64),
                          "pass_rate": train["pass_rate"].to_numpy(np.float64)})
    for name, s in per_set.items():
        col = np.full(len(train), np.nan)
        col[[pos[int(i)] for i in ids]] = s.numpy()
        table[f"score_{name}"] = col
    table["skipped"] = ""
    for reason, lst in skipped.items():
        table.loc[table["prompt_id"].isin(lst), "skipped"] = reason
    scores = {n: table[f"score_{n}"].to_numpy() for n in per_set}
    result = select(strategy, pool_for_selection(train, scores), fraction, seed)
    table["selected_rank"] = -1
    table.loc[[pos[int(i)] for i in result.prompt_ids], "selected_rank"] = np.arange(len(result.prompt_ids))
    n_zero, n_nonfinite = len(skipped.get("zero_advantage", [])), len(skipped.get("nonfinite", []))
    log.info("influence pass: %d prompts scored, %d zero-advantage removed, %d non-finite, %d selected",
             len(ids), n_zero, n_nonfinite, len(result.prompt_ids))
    return InfluencePass(table, result, n_zero, n_nonfinite)
