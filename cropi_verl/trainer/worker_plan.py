"""The memory plan (``cropi_verl/plan.py``) of a composed recipe config, and the influence workers' gradient
checkpointing decided by it.

``cropi.workers.gradient_checkpointing=auto``: off on CPU workers and with ``popi.share_prompt`` (checkpointing drops
the prompt's KV cache); on GPU workers, off when the plan at a boundary fits ``cropi.gpu_memory_gb`` without it
(checkpointing recomputes every layer's forward in backward: 8 instead of 6 P T FLOPs per token), else on; on when
the plan cannot be made (a model whose config cannot be read). The trainer runs the workers so and preflight prints
the choice and why.
"""

from __future__ import annotations

from typing import Any, Mapping

from cropi_verl.influence.gradients import PopiConfig
from cropi_verl.plan import GIB, GpuSpec, Plan, RecipeShape, WorkerSettings, model_shape, plan
from cropi_verl.workers.group import resolve_worker_precision


def recipe_shape(cfg) -> RecipeShape:
    """The plan's shapes from the composed config (FSDP shards the actor over every GPU of every node)."""
    data, rollout = cfg.data, cfg.actor_rollout_ref.rollout
    return RecipeShape(cfg.trainer.n_gpus_per_node * cfg.trainer.nnodes, data.max_prompt_length,
                       data.max_response_length, rollout.n, data.train_batch_size,
                       cfg.actor_rollout_ref.actor.ppo_max_token_len_per_gpu, rollout.gpu_memory_utilization)


def worker_settings(cropi: Mapping[str, Any], use_gpu: bool, checkpointing: bool) -> WorkerSettings:
    """The influence workers' settings on their device (``use_gpu``): dtype ``auto`` resolved
    (``resolve_worker_precision``), ``checkpointing`` as decided (``resolve_checkpointing``); the prompt is encoded
    once per micro-batch with ``share_prompt`` (a KV cache) or ``pack=prompt_once`` (in the packed row)."""
    popi, workers = cropi["popi"], cropi["workers"]
    dtype, _ = resolve_worker_precision(workers["dtype"], checkpointing, use_gpu)
    return WorkerSettings(dtype, checkpointing, popi["micro_batch_tokens"], popi["logit_chunk_tokens"],
                          popi["stream_buffer"], cropi["projection"]["k"], PopiConfig(**popi).prompt_once, use_gpu,
                          workers["offload_actor"])


def config_plan(cfg, worker: WorkerSettings) -> Plan:
    """The per-GPU plan of ``cfg``'s model and shapes with ``worker`` (raises when the model's config is unreadable)."""
    return plan(model_shape(cfg.actor_rollout_ref.model.path), recipe_shape(cfg), worker,
                GpuSpec(memory_bytes=int(cfg.cropi.gpu_memory_gb * GIB)))


def resolve_checkpointing(cfg, cropi: Mapping[str, Any], use_gpu: bool) -> tuple[bool, str]:
    """(gradient checkpointing on, why) for the influence workers (module docstring)."""
    setting = cropi["workers"]["gradient_checkpointing"]
    if setting != "auto":
        return bool(setting), f"cropi.workers.gradient_checkpointing={setting}"
    if not use_gpu:
        return False, "auto: CPU workers"
    if cropi["popi"]["share_prompt"]:
        return False, "auto: popi.share_prompt needs the prompt's KV cache"
    try:
        without = config_plan(cfg, worker_settings(cropi, use_gpu, False))
    except Exception as e:  # noqa: BLE001 - a hub id not downloaded, an unknown architecture: the safe choice
        return True, f"auto: no memory plan ({type(e).__name__} reading {cfg.actor_rollout_ref.model.path})"
    at = f"{without.total / GIB:.1f} GiB at a boundary without it, of {cfg.cropi.gpu_memory_gb} GiB"
    if without.boundary_fits():
        return False, f"auto: the plan fits ({at})"
    return True, f"auto: the plan needs it ({at})"
