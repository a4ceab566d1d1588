"""The demo's config (``configs/tiny_cpu.yaml`` + overrides), checked before any work.

``check_demo_config`` refuses keys that ``configs/tiny_cpu.yaml`` does not define (a mistyped ``+grpo.lrr=1e-4``),
validates every number, flag and choice (the loggers against verl's ``Tracking.supported_backend``) against
``DEMO_RULES`` (``cropi_verl/utils/config_rules.py``), then the policy's head counts, and the GRPO loss settings
with verl's own checks (``GRPOConfig``). It raises one ``ValueError`` that lists every problem: a bad override fails
in one line within seconds, not after the policy build or halfway through a run. ``dataclass_from`` builds the
run's dataclasses from the same config and refuses a key that is no field of them.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from verl.utils.tracking import Tracking

from cropi_verl.curriculum.schedule import STRATEGIES
from cropi_verl.data.toy_task import PROMPT_FORMATS, TIERS
from cropi_verl.influence.projection import METHODS
from cropi_verl.influence.scoring import METRICS
from cropi_verl.local.grpo import GRPOConfig
from cropi_verl.utils.cli import check_writable, one_line_errors
from cropi_verl.utils.config_rules import (
    AtLeastOne,
    Count,
    Flag,
    Fraction,
    GroupSize,
    NonNegative,
    NonNegativeInt,
    OptionalCount,
    OptionalPositive,
    Positive,
    Rescore,
    ShareOf,
    config_problems,
    list_of,
    one_of,
    shipped_keys,
    unknown_keys,
)

T = TypeVar("T")

DEMO_RULES = {
    "seed": NonNegativeInt, "repeats": Count, "threads": Count, "estimate": Flag,
    "task.seed": NonNegativeInt, "task.n_train": Count, "task.n_val": Count, "task.n_sft": Count,
    "task.val_tier": one_of(TIERS),
    **{f"policy.{k}": Count for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                      "num_key_value_heads", "max_position_embeddings", "vocab_size", "warmup_steps",
                                      "warmup_batch_size")},
    "policy.warmup_lr": Positive, "policy.seed": NonNegativeInt,
    "offline.n": GroupSize, "offline.val_n": GroupSize, "offline.temperature": Positive,
    "offline.adaptive_first": OptionalCount,
    **{f"offline.{k}": Count for k in ("max_new_tokens", "batch_size", "shard_size")},
    "methods": list_of(STRATEGIES, non_empty=True),
    "curriculum.num_stages": Count, "curriculum.steps_per_stage": Count, "curriculum.fraction": Fraction,
    "curriculum.rescore": Rescore, "curriculum.candidates.multiple": AtLeastOne,
    "curriculum.candidates.explore": ShareOf,
    **{f"influence.{k}": Count for k in ("workers", "threads_per_worker", "k", "micro_batch_tokens",
                                         "max_val_prompts", "shard_size")},
    "influence.method": one_of(METHODS), "influence.seed": NonNegativeInt, "influence.subset_ratio": Fraction,
    "influence.native": Flag, "influence.clip_ratio": OptionalPositive, "influence.share_prompt": Flag,
    "influence.merge_duplicates": Flag, "influence.metric": one_of(METRICS), "influence.grad_layers": OptionalCount,
    "grpo.batch_size": Count, "grpo.n": GroupSize, "grpo.temperature": Positive, "grpo.max_new_tokens": Count,
    "grpo.lr": Positive, "grpo.weight_decay": NonNegative, "grpo.grad_clip": Positive, "grpo.clip_ratio": Positive,
    "grpo.norm_adv_by_std_in_grpo": Flag, "grpo.use_kl_loss": Flag, "grpo.kl_loss_coef": NonNegative,
    "grpo.entropy_coeff": NonNegative, "grpo.micro_batch_tokens": Count, "eval.max_batch_tokens": Count,
    "policy.prompt": one_of(PROMPT_FORMATS),
    "train.ckpt_every": Count, "train.log_every": Count, "train.loggers": list_of(Tracking.supported_backend),
    "eval.k": Count, "eval.temperature": Positive, "eval.max_new_tokens": Count, "eval.batch_size": Count,
    "eval.every": Count, "eval.speedup_gain_fraction": Fraction,
}


def dataclass_from(cls: type[T], node: DictConfig, elsewhere: tuple[str, ...] = (), **extra: Any) -> T:
    """``cls`` from the keys of config ``node`` plus ``extra``; a key that is no field of ``cls`` is a ``ValueError``
    unless the caller reads it itself (``elsewhere``)."""
    values = {k: v for k, v in OmegaConf.to_container(node).items() if k not in elsewhere}
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"{cls.__name__} has no fields {unknown}: expected {names}")
    return cls(**values, **extra)


def check_demo_config(cfg: DictConfig) -> None:
    """Raise one ``ValueError`` listing every bad key of the demo config (see the module docstring)."""
    values = OmegaConf.to_container(cfg, resolve=True)
    problems = unknown_keys(values, shipped_keys("tiny_cpu")) + config_problems(values, DEMO_RULES)
    if not problems:  # the cross-key checks need well-typed values
        pol = values["policy"]
        heads, kv = pol["num_attention_heads"], pol["num_key_value_heads"]
        if pol["hidden_size"] % heads:
            problems.append(f"policy.num_attention_heads={heads}: expected a divisor of policy.hidden_size="
                            f"{pol['hidden_size']}")
        if heads % kv:
            problems.append(f"policy.num_key_value_heads={kv}: expected a divisor of policy.num_attention_heads="
                            f"{heads}")
        try:
            dataclass_from(GRPOConfig, cfg.grpo)
        except ValueError as e:
            problems.append(f"grpo: {e}")
        n_select, batch = round(values["curriculum"]["fraction"] * values["task"]["n_train"]), values["grpo"]["batch_size"]
        if n_select < batch and any(m != "full" for m in values["methods"]):
            problems.append(f"curriculum.fraction={values['curriculum']['fraction']} selects {n_select} of the "
                            f"task.n_train={values['task']['n_train']} pool prompts, fewer than one batch "
                            f"(grpo.batch_size={batch}): raise the fraction or lower the batch")
    if problems:
        raise ValueError("bad demo config: " + "; ".join(problems))


class WritableRunDir(Callback):
    """Hydra callback (``hydra.callbacks`` of configs/tiny_cpu.yaml): Hydra creates its run directory under
    ``output_dir`` before the job starts, so an unwritable ``output_dir`` is checked here, in one line."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        one_line_errors(check_writable)(config.hydra.run.dir, "hydra.run.dir (under output_dir)")
