"""The ``cropi:`` config group of ``configs/cropi_trainer.yaml``: checked at start-up, turned into a schedule.

``check_cropi_config`` collects every problem (a key that breaks its rule in ``CROPI_RULES``, such as a fraction
outside (0, 1] or an unknown strategy; a missing rollouts file, a scoring set absent from the validation rollouts,
a ``save_freq`` that does not divide the stage length, ...) and raises one ``ValueError`` that lists them all,
before any GPU work starts.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping

from cropi_verl.curriculum.schedule import STRATEGIES, StageSchedule
from cropi_verl.influence.gradients import PopiConfig
from cropi_verl.influence.projection import METHODS
from cropi_verl.influence.scoring import METRICS
from cropi_verl.utils.config_rules import (
    Count,
    Flag,
    Fraction,
    NonNegativeInt,
    OptionalCount,
    OptionalPositive,
    Positive,
    config_problems,
    one_of,
)

CROPI_RULES = {
    "num_stages": Count, "steps_per_stage": Count, "fraction": Fraction, "strategy": one_of(STRATEGIES),
    "rescore": Flag, "seed": NonNegativeInt, "metric": one_of(METRICS), "max_val_prompts": Count, "shard_size": Count,
    "projection.method": one_of(METHODS), "projection.k": Count, "projection.seed": NonNegativeInt,
    "projection.subset_ratio": Fraction, "projection.native": Flag,
    "popi.micro_batch": Count, "popi.clip_ratio": OptionalPositive, "popi.adv_eps": Positive,
    "popi.share_prompt": Flag, "popi.merge_duplicates": Flag, "popi.stream_buffer": Count,
    "workers.n": OptionalCount, "workers.use_gpu": Flag, "workers.threads": Count,
}


def _problems(cropi: Mapping[str, Any], trainer: Mapping[str, Any]) -> list[str]:
    out = config_problems(cropi, CROPI_RULES, prefix="cropi.")
    unknown = sorted(set(cropi.get("popi") or {}) - {f.name for f in fields(PopiConfig)})
    if unknown:
        out.append(f"cropi.popi has unknown keys {unknown}: expected {[f.name for f in fields(PopiConfig)]}")
    influence = cropi.get("strategy") in ("cropi", "influence_max", "influence_oneshot")
    train = cropi.get("train_rollouts")
    if influence or cropi.get("strategy") in ("pass_rate", "learnability"):
        if not train:
            out.append("cropi.train_rollouts is not set: collect them with scripts/collect_rollouts.py")
        elif not Path(train).is_file():
            out.append(f"cropi.train_rollouts={train}: no such file")
    if influence:
        val = dict(cropi.get("val_rollouts") or {})
        if not val:
            out.append("cropi.val_rollouts is empty: give NAME: PATH for each targeted validation set")
        out += [f"cropi.val_rollouts.{n}={p}: no such file" for n, p in val.items() if not Path(p).is_file()]
        missing = [n for n in (cropi.get("val_sets") or []) if n not in val]
        if missing:
            out.append(f"cropi.val_sets {missing} are absent from cropi.val_rollouts (have: {sorted(val)})")
    save_freq, sps = trainer.get("save_freq", -1), cropi.get("steps_per_stage")
    if isinstance(sps, int) and sps > 0 and isinstance(save_freq, int) and save_freq > 0 and sps % save_freq:
        out.append(f"trainer.save_freq={save_freq} must divide cropi.steps_per_stage={sps}, so that every stage "
                   "boundary has a checkpoint to resume from and to score at")
    return out


def check_cropi_config(cropi: Mapping[str, Any], trainer: Mapping[str, Any]) -> StageSchedule:
    """Validate the ``cropi`` group (and the trainer keys it depends on); returns the stage schedule."""
    problems = _problems(cropi, trainer)
    if problems:
        raise ValueError("bad CROPI config: " + "; ".join(problems))
    return StageSchedule(cropi["num_stages"], cropi["steps_per_stage"],
                         1.0 if cropi["strategy"] == "full" else cropi["fraction"], cropi["strategy"], cropi["rescore"])
