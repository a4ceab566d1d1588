"""One influence pass (the core of a stage boundary): projected POPI gradients of the pool and of each validation set at the current model,
cosine scores, and a selection. Used by ``scripts/score_influence.py`` and by the curriculum stage routine.

Features go to ``<store_root>/train`` and ``<store_root>/val_<name>`` feature stores whose manifest names the
model step, projector and POPI settings (``store_manifest``), so an interrupted pass resumes and a stale store is
refused. The gradients come from a ``Featurizer``: in process (``local_featurizer``) or a Ray worker group.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
import torch

from cropi_verl.curriculum.settings import SelectionConfig
from cropi_verl.influence.gradients import (
    DRIFT_COLUMNS,
    PopiConfig,
    PopiResult,
    PromptRollouts,
    is_zero_advantage,
    validation_gradient,
)
from cropi_verl.influence.pipeline import Featurizer, features_into_store
from cropi_verl.influence.projection import Projector
from cropi_verl.influence.scoring import influence_scores
from cropi_verl.influence.selection import SelectionPool, SelectionResult, select
from cropi_verl.influence.store import FeatureStore
from cropi_verl.rollout.records import excluded_responses, to_prompt_rollouts
from cropi_verl.utils.draw import seeded_subset
from cropi_verl.utils.identity import ids_digest

log = logging.getLogger(__name__)
ESS_LOW = 0.25  # a prompt whose sequence-level ESS/K is below this: few of its responses carry the weight


@dataclass
class InfluencePass:
    scores: pd.DataFrame  # prompt_id, pass_rate, score_<set> (NaN = not scored), skipped reason
    selection: SelectionResult
    n_gradients: int  # pool prompts whose gradient was computed (scored or non-finite): the pass's cost
    n_zero_advantage: int
    n_nonfinite: int
    n_excluded: int  # responses of the pool excluded (empty or non-finite reward: ``records.usable_responses``)
    seconds: dict[str, float] = field(default_factory=dict)  # val_features, pool_features, scoring
    drift: dict[str, float] = field(default_factory=dict)  # ``drift_summary`` of the scored pool prompts
    flops: float = 0.0  # of the pass's forward and backward passes, validation sets and pool (``pass_flops``)


def pool_for_selection(train: pd.DataFrame, scores: Mapping[str, np.ndarray] | None = None) -> SelectionPool:
    """A selection pool over every prompt of the train rollouts (pass rate NaN -> 0: never solved/flagged)."""
    return SelectionPool(
        prompt_ids=train["prompt_id"].to_numpy(np.int64),
        scores=dict(scores or {}),
        pass_rate=np.nan_to_num(train["pass_rate"].to_numpy(np.float64), nan=0.0),
    )


def validation_prompts(frame: pd.DataFrame, max_prompts: int, seed: int) -> list[PromptRollouts]:
    """The prompts behind a validation gradient: those of ``frame`` with a non-zero advantage (the others have a
    zero gradient), at most ``max_prompts`` of them drawn with ``seed`` (in file order). The caller passes one seed
    for every stage, so every stage is scored against the same validation prompts (as the paper's code does)."""
    prompts = [p for p in to_prompt_rollouts(frame) if not is_zero_advantage(p.rewards)]
    if len(prompts) <= max_prompts:
        return prompts
    return [prompts[i] for i in seeded_subset(len(prompts), max_prompts, seed)]


def store_manifest(projector: Projector, popi: PopiConfig, **extra) -> dict:
    """What a feature store must match to be reused: projector config, k, POPI settings, plus ``extra``
    (e.g. ``model``, ``model_step``)."""
    return extra | {"projector": projector.config(), "k": projector.k, "popi": asdict(popi)}


def influence_pass(
    featurize: Featurizer,
    train: pd.DataFrame,
    val: Mapping[str, pd.DataFrame],
    store_root: str | Path,
    cfg: SelectionConfig,
    stage: int = 0,
    manifest: dict | None = None,
    candidates: np.ndarray | None = None,
) -> InfluencePass:
    """Features, scores and selection at the policy ``featurize`` runs (see the module docstring), selecting with
    ``cfg.schedule``'s strategy and fraction and ``cfg.stage_seed(stage)`` (ties); the validation prompts are drawn
    with ``cfg.seed`` (``validation_prompts``). ``manifest``: the feature stores' (default ``cfg.manifest``).
    ``candidates``: the pool prompt ids to give the pass (None: all; the others are unscored, ``skipped``
    "not_candidate", and the selection still takes ``fraction`` of the whole pool from the scored). A pool
    of which no prompt can be scored is a ``ValueError`` that names the cause (``nothing_scored``)."""
    manifest = cfg.manifest if manifest is None else manifest
    root = Path(store_root)
    val_grads, flops = {}, 0.0
    t0 = time.perf_counter()
    for name, frame in val.items():
        prompts = validation_prompts(frame, cfg.max_val_prompts, cfg.seed)
        stored = features_into_store(
            featurize, prompts, FeatureStore(root / f"val_{name}", manifest | {"set": name}), cfg.shard_size,
            cfg.progress,
        )
        flops += stored.flops
        try:
            val_grads[name] = validation_gradient(PopiResult(stored.prompt_ids.tolist(), stored.features))
        except ValueError as e:
            raise ValueError(f"validation set {name!r}: {e} ({len(frame)} prompts, {len(prompts)} with a non-zero "
                             "advantage)") from None
    t1 = time.perf_counter()
    scored = train if candidates is None else train[train["prompt_id"].isin(candidates)]
    given = {} if candidates is None else {"given": ids_digest(scored["prompt_id"])}  # a resume: the same prompts
    pool = features_into_store(
        featurize, to_prompt_rollouts(scored), FeatureStore(root / "train", manifest | {"set": "train"} | given),
        cfg.shard_size, cfg.progress,
    )
    ids, feats, skipped, drift = pool.prompt_ids, pool.features, pool.skipped, pool.drift
    t2 = time.perf_counter()
    n_zero, n_nonfinite = len(skipped.get("zero_advantage", [])), len(skipped.get("nonfinite", []))
    n_excluded = excluded_responses(train)
    if not len(ids):
        raise ValueError(nothing_scored(train, n_zero, n_nonfinite, n_excluded))
    per_set = influence_scores(feats, val_grads, cfg.metric)
    pos = {int(p): i for i, p in enumerate(train["prompt_id"])}
    table = pd.DataFrame({"prompt_id": train["prompt_id"].to_numpy(np.int64),
                          "pass_rate": train["pass_rate"].to_numpy(np.float64)})
    for name, s in per_set.items():
        col = np.full(len(train), np.nan)
        col[[pos[int(i)] for i in ids]] = s.numpy()
        table[f"score_{name}"] = col
    for c, column in enumerate(DRIFT_COLUMNS):
        col = np.full(len(train), np.nan)
        col[[pos[int(i)] for i in ids]] = drift[:, c].numpy()
        table[column] = col
    table["skipped"] = "" if candidates is None else np.where(table["prompt_id"].isin(candidates), "", "not_candidate")
    for reason, lst in skipped.items():
        table.loc[table["prompt_id"].isin(lst), "skipped"] = reason
    scores = {n: table[f"score_{n}"].to_numpy() for n in per_set}
    result = select(cfg.schedule.select_strategy, pool_for_selection(train, scores), cfg.schedule.fraction,
                    cfg.stage_seed(stage))
    table["selected_rank"] = -1
    table.loc[[pos[int(i)] for i in result.prompt_ids], "selected_rank"] = np.arange(len(result.prompt_ids))
    log.info("influence pass: %d of %d pool prompts scored%s, %d zero-advantage removed, %d non-finite, %d responses "
             "excluded (empty or non-finite reward), %d selected", len(ids), len(train),
             "" if candidates is None else f" (given {len(scored)}: candidates and zero-advantage)", n_zero,
             n_nonfinite, n_excluded, len(result.prompt_ids))
    seconds = {"val_features": t1 - t0, "pool_features": t2 - t1, "scoring": time.perf_counter() - t2}
    return InfluencePass(table, result, len(ids) + n_nonfinite, n_zero, n_nonfinite, n_excluded,
                         {k: round(v, 3) for k, v in seconds.items()},
                         drift_summary(drift), flops + pool.flops)


def drift_summary(drift: torch.Tensor) -> dict[str, float]:
    """Over the scored pool prompts' drift rows (``DRIFT_COLUMNS``; rows of NaN, from shards written before the meter,
    left out): the mean sequence-level and token-mean ESS/K, the share of prompts whose sequence-level ESS/K is below
    ``ESS_LOW`` and the largest token ratio (NaN when no row has them)."""
    rows = drift[~torch.isnan(drift).any(1)]
    if not len(rows):
        return {"ess_seq_mean": math.nan, "ess_popi_mean": math.nan, "ess_low_share": math.nan, "rho_max": math.nan}
    return {"ess_seq_mean": float(rows[:, 0].mean()), "ess_popi_mean": float(rows[:, 1].mean()),
            "ess_low_share": float((rows[:, 0] < ESS_LOW).double().mean()), "rho_max": float(rows[:, 2].max())}


def nothing_scored(train: pd.DataFrame, n_zero: int, n_nonfinite: int, n_excluded: int) -> str:
    """Why no prompt of the pool ``train`` could be scored, in one line."""
    n_responses = int(train["flag"].map(len).sum())
    return (f"no prompt of the pool of {len(train)} can be scored ({n_zero} zero-advantage: beta solved all or none "
            f"of its usable responses, or fewer than two are usable; {n_excluded} of {n_responses} responses excluded "
            f"as empty or with a non-finite reward; {n_nonfinite} non-finite gradients); influence cannot select. "
            "Re-collect the rollouts with more responses or a higher temperature, or use a pass_rate / random "
            "strategy")
