"""The ``cropi:`` config group of ``configs/cropi_trainer.yaml``: checked at start-up, turned into a schedule.

``check_cropi_config`` collects every problem (a fraction outside (0, 1], an unknown strategy, a missing
rollouts file, a scoring set absent from the validation rollouts, a ``save_freq`` that does not divide the stage
length, ...) and raises one ``ValueError`` that lists them all, before any GPU work starts.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping

from cropi_verl.curriculum.schedule import STRATEGIES, StageSchedule
from cropi_verl.influence.gradients import PopiConfig
from cropi_verl.influence.projection import METHODS


def _problems(cropi: Mapping[str, Any], trainer: Mapping[str, Any]) -> list[str]:
    out = []
    frac = cropi.get("fraction")
    if not isinstance(frac, (int, float)) or not 0 < frac <= 1:
        out.append(f"cropi.fraction={frac!r}: expected a number in (0, 1]")
    if cropi.get("strategy") not in STRATEGIES:
        out.append(f"cropi.strategy={cropi.get('strategy')!r}: expected one of {', '.join(STRATEGIES)}")
    for key in ("num_stages", "steps_per_stage"):
        if not isinstance(cropi.get(key), int) or cropi[key] < 1:
            out.append(f"cropi.{key}={cropi.get(key)!r}: expected an integer >= 1")
    if cropi.get("projection", {}).get("method") not in METHODS:
        out.append(f"cropi.projection.method={cropi.get('projection', {}).get('method')!r}: expected one of {METHODS}")
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
