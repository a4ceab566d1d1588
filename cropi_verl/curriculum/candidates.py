"""Re-scoring only candidates (``rescore=candidates``): after stage 0, a boundary's influence pass computes the POPI
gradients of a subset of the pool only, the *candidates*:

- the previous stage's top ``m * f * N`` prompts (``m = multiple``, ``f`` the selected fraction, ``N`` the pool),
  ranked by the previous stage's scores with the same strategy and seed as its selection;
- plus ``round(explore * R)`` of the ``R`` other scorable prompts, drawn with the stage's seed, so that a prompt the
  previous ranking placed low can come back.

A zero-advantage prompt (beta's rewards all equal) has a zero gradient at every stage, since the offline rollouts do
not change, so it is never a candidate, and costs nothing in a full pass either. With ``Z`` of them, a full pass
computes ``N - Z`` gradients and a candidates pass about ``m f N + explore (N - Z - m f N)``
(``CandidateConfig.scored_share``): at ``m = 3, f = 0.1, explore = 0.1`` and half the pool zero-advantage, 0.64 of
them; where ``m f N >= N - Z`` there is nothing to save. The selection still takes ``f * N`` prompts, from the scored
candidates. The pass is given the candidates and the zero-advantage prompts (it counts and skips those before any
backward, as a full pass does, so ``n_zero_advantage`` keeps its meaning); any other prompt is unscored (NaN;
``skipped`` "not_candidate") in the stage's scores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cropi_verl.curriculum.influence_pass import pool_for_selection
from cropi_verl.curriculum.settings import CandidateConfig, SelectionConfig
from cropi_verl.curriculum.state import StageState, stage_dir
from cropi_verl.influence.selection import select
from cropi_verl.rollout.records import zero_advantage
from cropi_verl.utils.draw import seeded_subset


def candidate_ids(previous_ranking: np.ndarray, scorable: np.ndarray, n_pool: int, cfg: CandidateConfig,
                  fraction: float, seed: int) -> np.ndarray:
    """The prompt ids to score (sorted): the first ``round(min(1, m f) N)`` of ``previous_ranking`` (ids, best first;
    shorter when the previous stage scored fewer), ``N = n_pool``, and ``round(explore R)`` of the R other ids of
    ``scorable`` (the pool's non-zero-advantage prompts), drawn with ``seed`` (``seeded_subset``, in their order)."""
    n_top = int(round(cfg.top_fraction(fraction) * n_pool))
    top = np.asarray(previous_ranking, dtype=np.int64)[:n_top]
    rest = np.asarray(scorable, dtype=np.int64)[~np.isin(scorable, top)]
    explore = rest[seeded_subset(len(rest), int(round(cfg.explore * len(rest))), seed)]
    return np.sort(np.concatenate([top, explore]))


def stage_candidates(stage: int, cfg: SelectionConfig, train: pd.DataFrame, previous: StageState | None,
                     curriculum_dir: str | Path) -> np.ndarray | None:
    """The prompt ids stage ``stage``'s pass is given: the candidates (``candidate_ids`` with the stage's seed) and
    the zero-advantage prompts; None: the whole pool (stage 0, or ``cfg.candidates`` None). ``previous``: the
    previous stage's state (None: read from ``curriculum_dir``, as on a resume that holds none)."""
    if cfg.candidates is None or stage == 0:
        return None
    if previous is None and (stage_dir(curriculum_dir, stage - 1) / "state.json").is_file():
        previous = StageState.load(stage_dir(curriculum_dir, stage - 1) / "state.json")
    zero = zero_advantage(train)
    ids = train["prompt_id"].to_numpy(np.int64)
    chosen = candidate_ids(previous_ranking(previous, train, cfg, curriculum_dir), ids[~zero], len(train),
                           cfg.candidates, cfg.schedule.fraction, cfg.stage_seed(stage))
    return np.sort(np.concatenate([chosen, ids[zero]]))


def previous_ranking(previous: StageState | None, train: pd.DataFrame, cfg: SelectionConfig,
                     curriculum_dir: str | Path) -> np.ndarray:
    """The pool ids the previous stage's scores rank best first, as far as ``min(1, m f)`` of the pool: ``select``
    with its strategy and seed on its ``scores.parquet`` (prompts it did not score come last, i.e. not at all)."""
    if previous is None or previous.score_file is None:
        raise ValueError("rescore=candidates: a stage after 0 needs the previous stage's scores (its state.json with "
                         "a score_file); was the previous stage selected without an influence pass?")
    table = pd.read_parquet(previous.scores_path(curriculum_dir)).set_index("prompt_id").reindex(train["prompt_id"])
    scores = {c[len("score_"):]: table[c].to_numpy(np.float64) for c in table.columns if c.startswith("score_")}
    top = cfg.candidates.top_fraction(cfg.schedule.fraction)
    pool = pool_for_selection(train, scores)
    return select(cfg.schedule.select_strategy, pool, top, previous.selection_seed).prompt_ids
