"""The ``cropi:`` config group of ``configs/cropi_trainer.yaml``: checked at start-up, turned into a schedule.

``check_cropi_config`` collects every problem (a key the shipped group does not define, such as a mistyped
``+cropi.fractoin=0.2``: ``check_cropi_keys``; a key that breaks its rule in ``CROPI_RULES``, such as a fraction
outside (0, 1] or an unknown strategy; a missing rollouts file, a scoring set absent from the validation rollouts,
a ``save_freq`` that does not divide the stage length, an actor checkpoint without ``hf_model`` when boundaries
after stage 0 are scored, a trainer other than verl's sync v1, ...) and raises one ``ValueError`` that lists them all,
before any GPU work starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

from pydantic import Field

from cropi_verl.curriculum.schedule import INFLUENCE_STRATEGIES, PASS_RATE_STRATEGIES, STRATEGIES, StageSchedule
from cropi_verl.influence.gradients import checkpointing_conflict
from cropi_verl.influence.projection import METHODS
from cropi_verl.influence.scoring import METRICS
from cropi_verl.utils.config_rules import (
    AtLeastOne,
    Count,
    Flag,
    Fraction,
    NonNegativeInt,
    OptionalCount,
    OptionalPositive,
    PackMode,
    Positive,
    Rescore,
    ShareOf,
    config_problems,
    one_of,
    shipped_keys,
    unknown_keys,
)
from cropi_verl.workers.group import WORKER_DTYPES

AutoFlag = Annotated[Literal["auto"] | Flag, Field(description="auto, true or false")]
RewardRange = Annotated[list[Annotated[float, Field(allow_inf_nan=False)]],
                        Field(min_length=2, max_length=2, description="[low, high]: two finite numbers")]

CROPI_RULES = {
    "num_stages": Count, "steps_per_stage": Count, "fraction": Fraction, "strategy": one_of(STRATEGIES),
    "rescore": Rescore, "candidates.multiple": AtLeastOne, "candidates.explore": ShareOf, "seed": NonNegativeInt,
    "metric": one_of(METRICS), "max_val_prompts": Count, "shard_size": Count,
    "reward_range": RewardRange,
    "gpu_memory_gb": Positive,
    "projection.method": one_of(METHODS), "projection.k": Count, "projection.seed": NonNegativeInt,
    "projection.subset_ratio": Fraction, "projection.native": Flag,
    "popi.micro_batch_tokens": Count, "popi.logit_chunk_tokens": Count, "popi.clip_ratio": OptionalPositive,
    "popi.adv_eps": Positive, "popi.share_prompt": Flag, "popi.merge_duplicates": Flag, "popi.stream_buffer": Count,
    "popi.pack": PackMode, "popi.grad_layers": OptionalCount,
    "workers.n": OptionalCount, "workers.use_gpu": AutoFlag, "workers.threads": Count,
    "workers.dtype": one_of(WORKER_DTYPES), "workers.gradient_checkpointing": AutoFlag, "workers.offload_actor": Flag,
}


CROPI_KEYS = shipped_keys("cropi_trainer")["cropi"]  # the group as shipped: every key a run may set


def _raise_if(problems: list[str]) -> None:
    if problems:
        raise ValueError("bad CROPI config: " + "; ".join(problems))


def check_cropi_keys(cropi: Mapping[str, Any]) -> None:
    """Raise one ``ValueError`` naming every key of the ``cropi`` group (and of its sub-groups ``projection``,
    ``popi``, ``workers``) that ``configs/cropi_trainer.yaml`` does not define, with the keys it does."""
    _raise_if(unknown_keys(cropi, CROPI_KEYS, "cropi."))


def _problems(cropi: Mapping[str, Any], trainer: Mapping[str, Any], checkpoint: Mapping[str, Any] | None) -> list[str]:
    out = unknown_keys(cropi, CROPI_KEYS, "cropi.") + config_problems(cropi, CROPI_RULES, prefix="cropi.")
    out += _checkpointing_problems(cropi)
    strategy = _checked_strategy(cropi)
    influence = strategy in INFLUENCE_STRATEGIES
    out += _reward_range_problems(cropi, strategy)
    train = cropi.get("train_rollouts")
    if influence or strategy in PASS_RATE_STRATEGIES:
        if not train:
            out.append("cropi.train_rollouts is not set: collect them with scripts/collect_rollouts.py")
        elif not Path(train).is_file():
            out.append(f"cropi.train_rollouts={train}: no such file")
    if influence:
        val = dict(cropi.get("val_rollouts") or {})
        if not val:
            out.append("cropi.val_rollouts is empty: give NAME: PATH for each targeted validation set")
        out += [f"cropi.val_rollouts.{n}={p}: no such file" for n, p in val.items() if not Path(p).is_file()]
        sets = cropi.get("val_sets")
        if sets is not None and (not isinstance(sets, list) or not all(isinstance(n, str) for n in sets)):
            out.append(f"cropi.val_sets={sets!r}: expected a list of names of cropi.val_rollouts, e.g. "
                       f"cropi.val_sets=[{','.join(val) or 'NAME'}]")
            sets = []
        missing = [n for n in (sets or []) if n not in val]
        if missing:
            out.append(f"cropi.val_sets {missing} are absent from cropi.val_rollouts (have: {sorted(val)})")
    out += _trainer_problems(trainer, cropi, checkpoint or {})
    return out


def _reward_range_problems(cropi: Mapping[str, Any], strategy: str) -> list[str]:
    """A well-formed ``reward_range`` must go up, and a pass-rate strategy needs rewards in [0, 1]."""
    low_high = cropi.get("reward_range")
    if config_problems({"r": low_high}, {"r": RewardRange}):
        return []  # reported by the key rules
    low, high = low_high
    if low >= high:
        return [f"cropi.reward_range={list(low_high)}: expected low < high"]
    if strategy in PASS_RATE_STRATEGIES and (low, high) != (0, 1):
        return [f"cropi.strategy={strategy} selects on pass rates, which need rewards in [0, 1]; "
                f"cropi.reward_range={list(low_high)}"]
    return []


def reward_range(cropi: Mapping[str, Any]) -> tuple[float, float]:
    """``cropi.reward_range`` as a (low, high) pair (checked by ``check_cropi_config``)."""
    low, high = cropi.get("reward_range") or (0.0, 1.0)
    return float(low), float(high)


def _checked_strategy(cropi: Mapping[str, Any]) -> str:
    """The strategy whose inputs are checked: an unknown one (reported by its rule) is checked as ``cropi``, the
    default, so that its other problems are reported at once too."""
    strategy = cropi.get("strategy")
    return strategy if strategy in STRATEGIES else "cropi"


def workers_on_gpu(cropi: Mapping[str, Any], trainer: Mapping[str, Any]) -> bool:
    """``cropi.workers.use_gpu`` resolved: ``auto`` is true unless verl's ``trainer.device`` is cpu."""
    use = (cropi.get("workers") or {}).get("use_gpu")
    return trainer.get("device", "cuda") != "cpu" if use == "auto" else use is True


def _checkpointing_problems(cropi: Mapping[str, Any]) -> list[str]:
    """``popi.share_prompt`` with the workers' gradient checkpointing turned on (``auto`` leaves it off with
    ``share_prompt``: ``worker_plan.resolve_checkpointing``)."""
    workers, share = cropi.get("workers") or {}, (cropi.get("popi") or {}).get("share_prompt")
    conflict = checkpointing_conflict(share is True, workers.get("gradient_checkpointing") is True)
    if not conflict:
        return []
    return [f"cropi.popi.share_prompt=true with cropi.workers.gradient_checkpointing=true: {conflict}"]


def _trainer_problems(trainer: Mapping[str, Any], cropi: Mapping[str, Any], checkpoint: Mapping[str, Any]) -> list[str]:
    """The verl keys CROPI depends on: the sync v1 trainer, and a checkpoint with HF weights at every boundary, whole
    when the boundary reads it (``checkpoint``: the actor's checkpoint config)."""
    out = []
    resume, path = trainer.get("resume_mode", "auto"), trainer.get("resume_from_path")
    if resume not in ("auto", "disable", "resume_path"):
        out.append(f"trainer.resume_mode={resume}: expected one of auto, disable, resume_path")
    elif resume == "resume_path" and not (isinstance(path, str) and "global_step_" in path):
        out.append(f"trainer.resume_mode=resume_path with trainer.resume_from_path={path}: expected a "
                   "global_step_N folder")
    if checkpoint.get("async_save"):
        out.append("actor_rollout_ref.actor.checkpoint.async_save=true: a boundary reads its checkpoint as soon as "
                   "verl returns from saving it, and a rerun resumes from latest_checkpointed_iteration.txt, which "
                   "verl does not write with async_save; set it to false")
    mode = (trainer.get("v1") or {}).get("trainer_mode", "sync")
    if not trainer.get("use_v1", True) or mode != "sync":
        out.append(f"trainer.use_v1={trainer.get('use_v1', True)}, trainer.v1.trainer_mode={mode}: CROPI runs on "
                   "verl's synchronous v1 trainer only (use_v1=true, trainer_mode=sync)")
    save_freq, sps = trainer.get("save_freq", -1), cropi.get("steps_per_stage")
    if isinstance(sps, int) and sps > 0 and isinstance(save_freq, int) and save_freq > 0 and sps % save_freq:
        out.append(f"trainer.save_freq={save_freq} must divide cropi.steps_per_stage={sps}, so that every stage "
                   "boundary has a checkpoint to resume from and to score at")
    if not _scores_after_stage_0(cropi):
        return out
    if isinstance(save_freq, int) and save_freq <= 0:
        out.append(f"trainer.save_freq={save_freq}: strategy {_checked_strategy(cropi)} scores the pool at every stage "
                   "boundary from the checkpoint saved there; set save_freq to a divisor of cropi.steps_per_stage")
    save_contents = checkpoint.get("save_contents")
    if save_contents is not None and "hf_model" not in save_contents:
        out.append(f"actor_rollout_ref.actor.checkpoint.save_contents={list(save_contents)} lacks hf_model: the "
                   "influence workers load the boundary's weights from global_step_N/actor/huggingface")
    return out


def _scores_after_stage_0(cropi: Mapping[str, Any]) -> bool:
    """Whether an influence pass runs at a boundary after stage 0 (it then reads a saved checkpoint)."""
    try:
        schedule = StageSchedule(cropi["num_stages"], cropi["steps_per_stage"], 1.0, _checked_strategy(cropi),
                                 bool(cropi["rescore"]))
    except (KeyError, TypeError, ValueError):
        return False  # reported by the key rules
    return any(schedule.needs_pass(s) for s in range(1, schedule.num_stages))


def check_cropi_config(cropi: Mapping[str, Any], trainer: Mapping[str, Any],
                       checkpoint: Mapping[str, Any] | None = None) -> StageSchedule:
    """Validate the ``cropi`` group and the verl keys it depends on (``trainer``, and the actor's ``checkpoint``
    config, ``save_contents`` and ``async_save``, when given); returns the stage schedule."""
    _raise_if(_problems(cropi, trainer, checkpoint))
    return StageSchedule(cropi["num_stages"], cropi["steps_per_stage"],
                         1.0 if cropi["strategy"] == "full" else cropi["fraction"], cropi["strategy"],
                         bool(cropi["rescore"]))


def check_composed_config(config) -> StageSchedule:
    """``check_cropi_config`` on a composed recipe config (its ``cropi``, ``trainer``, the actor's ``checkpoint``)."""
    from omegaconf import OmegaConf

    checkpoint = OmegaConf.select(config, "actor_rollout_ref.actor.checkpoint")
    return check_cropi_config(OmegaConf.to_container(config.cropi, resolve=True),
                              OmegaConf.to_container(config.trainer, resolve=True),
                              None if checkpoint is None else OmegaConf.to_container(checkpoint, resolve=True))
