"""``stage_boundary``: the one routine both backends call at the first step of every stage.

It decides the stage's subset and returns its ``StageState``:

1. ``<curriculum_dir>/stage_<s>/state.json`` exists: the selection of this stage is already final (a resumed run),
   so it is returned as it is; nothing is recomputed.
2. The schedule asks for an influence pass: ``featurizer()`` gives a ``Featurizer`` at the current policy (the
   caller syncs weights to its worker group there), the pass writes resumable feature stores under
   ``stage_<s>/features`` and ``stage_<s>/scores.parquet``; the selection follows from the scores. With
   ``cfg.candidates``, a pass after stage 0 scores only the candidates that the previous stage's scores give
   (``curriculum/candidates.py``).
3. One-shot influence after stage 0: the previous stage's subset is kept.
4. Otherwise: ``select()`` by pass rate / learnability / random / full with seed ``seed + s``.

Then ``state.json`` is written atomically; it is the last thing written, so a kill before it redoes (and resumes)
the stage's work and a kill after it reuses it.

``source`` names the weights the stage is selected at (the verl trainer: the initial model, or the id of the
checkpoint saved at the boundary). It is written first, into ``stage_<s>/source.json``; a stage directory made at
other weights (a rerun with ``resume_mode=disable``, or from an earlier checkpoint, in the same directory) is
deleted, with a warning, and the stage is selected anew: its selection and features are never reused.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import pandas as pd

from cropi_verl.curriculum.candidates import stage_candidates
from cropi_verl.curriculum.influence_pass import influence_pass, pool_for_selection
from cropi_verl.curriculum.settings import SelectionConfig
from cropi_verl.curriculum.state import StageState, stage_dir
from cropi_verl.influence.pipeline import Featurizer
from cropi_verl.influence.selection import select
from cropi_verl.utils.atomic import atomic_write_json, atomic_write_parquet
from cropi_verl.utils.faults import kill_point
from cropi_verl.utils.identity import ids_digest

log = logging.getLogger(__name__)


def start_clean_unless_from(out: Path, source: dict) -> None:
    """``out`` (a stage directory) holds work from the weights ``source`` only: a directory from other weights, or
    without ``source.json``, is deleted first (a warning names both); then ``source.json`` records ``source``."""
    record = out / "source.json"
    recorded = json.loads(record.read_text()) if record.is_file() else None
    if recorded == source:
        return
    if out.exists():
        log.warning("%s was computed at other weights (%s; now %s): selecting this stage anew", out, recorded, source)
        shutil.rmtree(out)
    atomic_write_json(source, record)


def check_rollout_ids(train_rollouts: pd.DataFrame, prompt_ids: Iterable[int], label: str) -> None:
    """Every rollout prompt id must be a row of the training prompts (else: rollouts of another dataset)."""
    known = set(int(i) for i in prompt_ids)
    unknown = [int(i) for i in train_rollouts["prompt_id"] if int(i) not in known]
    if unknown:
        raise ValueError(f"{label}: {len(unknown)} prompt ids are not rows of the training prompts (first: "
                         f"{unknown[:5]}); were the rollouts collected from another dataset?")


def selection_settings(cfg: SelectionConfig, train: pd.DataFrame, val: Mapping[str, pd.DataFrame]) -> dict:
    """What decides a stage's selection, besides the policy: the schedule, the seeds and scoring settings, the pool
    (its prompt ids, hashed), the validation sets, and the feature stores' manifest (model, projector, POPI)."""
    pool = ids_digest(train["prompt_id"].to_numpy(np.int64))
    rescore = "candidates" if cfg.candidates is not None and cfg.schedule.rescore else cfg.schedule.rescore
    settings = {"fraction": cfg.schedule.fraction, "rescore": rescore, "seed": cfg.seed,
                "metric": cfg.metric, "max_val_prompts": cfg.max_val_prompts, "pool": pool, "val_sets": sorted(val),
                **({"candidates": asdict(cfg.candidates)} if rescore == "candidates" else {}), **cfg.manifest}
    return json.loads(json.dumps(settings, default=str))  # as state.json will hold it


def stage_boundary(
    stage: int,
    step: int,
    cfg: SelectionConfig,
    train: pd.DataFrame,
    val: Mapping[str, pd.DataFrame],
    curriculum_dir: str | Path,
    featurizer: Callable[[], Featurizer],
    previous: StageState | None = None,
    source: dict | None = None,
) -> StageState:
    """The subset for stage ``stage`` starting at global step ``step`` (see the module docstring).

    ``train``/``val`` are offline rollout tables; ``cfg.manifest`` identifies the feature stores (model, projector,
    POPI settings); ``model_step`` is added here. ``source``: the weights' identity (None: not checked).
    """
    out = stage_dir(curriculum_dir, stage)
    if source is not None:
        start_clean_unless_from(out, source)
    schedule = cfg.schedule
    settings = selection_settings(cfg, train, val)
    if (out / "state.json").is_file():
        state = StageState.load(out / "state.json")
        if state.stage != stage or state.start_step != step or state.strategy != schedule.strategy:
            raise ValueError(f"{out / 'state.json'}: holds stage {state.stage} at step {state.start_step} "
                             f"({state.strategy}), expected stage {stage} at step {step} ({schedule.strategy}); "
                             "is this output directory from another run?")
        changed = sorted(k for k in settings if k in state.settings and state.settings[k] != settings[k])
        if changed:
            raise ValueError(f"{out / 'state.json'}: its selection was made with other settings ("
                             + ", ".join(f"{k}={state.settings[k]!r}, now {settings[k]!r}" for k in changed)
                             + "); use another output directory, or delete it to select again")
        log.info("stage %d: selection already final (%d prompts), reusing %s", stage, len(state.selected_ids), out)
        return state
    t0 = time.time()
    sel_seed = cfg.stage_seed(stage)
    stats: dict = {"n_pool": len(train)}
    score_file = None
    if schedule.needs_pass(stage):
        candidates = stage_candidates(stage, cfg, train, previous, curriculum_dir)
        res = influence_pass(featurizer(), train, val, out / "features", cfg, stage=stage,
                             manifest=cfg.manifest | {"model_step": step}, candidates=candidates)
        score_file = str(atomic_write_parquet(res.scores, out / "scores.parquet"))
        kill_point("scores_written")
        selected = res.selection.prompt_ids.tolist()
        stats |= {"n_gradients": res.n_gradients, "n_zero_advantage": res.n_zero_advantage,
                  "n_nonfinite": res.n_nonfinite, "n_excluded_responses": res.n_excluded,
                  "shortfall": res.selection.shortfall, "pass_seconds": res.seconds, "drift": res.drift,
                  "pass_flops": res.flops}
    elif schedule.uses_influence:
        if previous is None:
            raise ValueError(f"stage {stage}: one-shot influence needs the previous stage's state")
        selected, score_file = list(previous.selected_ids), previous.score_file
    else:
        selected = select(schedule.select_strategy, pool_for_selection(train), schedule.fraction, sel_seed).prompt_ids.tolist()
    stats["seconds"] = round(time.time() - t0, 3)
    state = StageState(stage, step, schedule.strategy, [int(i) for i in selected], sel_seed, cfg.seed * 1000 + stage,
                       score_file, stats, settings)
    state.save(out / "state.json")
    log.info("stage %d (step %d): %s selected %d of %d prompts in %.1fs", stage, step, schedule.strategy,
             len(selected), len(train), stats["seconds"])
    return state
