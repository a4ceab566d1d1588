"""The few places where verl 0.9.1 hard-codes an accelerator (or a GPU-sized wait), patched for the CPU platform only.

Each patch names the verl file and function it replaces and why. ``apply()`` refuses any verl other than
``VERL_VERSION``: the patches were written against that version's source.
"""

from __future__ import annotations

import ray

VERL_VERSION = "0.9.1"
POLL_INTERVAL_S = 0.05


def _check_cpus_available(self) -> None:
    """Replaces ``ResourcePoolManager._check_resource_available`` (verl/single_controller/ray/base.py): verl counts
    only "GPU"/"NPU" and raises "Total available GPUs 0"; here the platform's Ray resource (``CPU``) is counted."""
    from verl.utils.device import get_platform

    name = get_platform().ray_resource_name()
    available = sum(node.get(name, 0) for node in ray._private.state.available_resources_per_node().values())
    required = sum(n for per_node in self.resource_pool_spec.values() for n in per_node)
    if available < required:
        raise ValueError(f"{available} Ray {name}s are available, {required} are needed: raise "
                         "ray_kwargs.ray_init.num_cpus (logical CPUs; the host's cores are shared)")


def _unpinned_offload_policy(pin_memory: bool = True):
    """Replaces ``CPUOffloadPolicy`` in verl/workers/engine/fsdp/transformer_impl.py: verl shards the reference
    policy (forward only) with ``CPUOffloadPolicy(pin_memory=True)``, and pinned memory needs an accelerator ("Cannot
    access accelerator device when none is available"); on the CPU the parameters are in host memory either way."""
    from torch.distributed.fsdp import CPUOffloadPolicy

    return CPUOffloadPolicy(pin_memory=False)


def apply() -> None:
    """Patch verl for the CPU platform (idempotent)."""
    import verl
    from verl.single_controller.ray import base as ray_base
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer
    from verl.utils import distributed
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp import transformer_impl

    if verl.__version__ != VERL_VERSION:
        raise RuntimeError(f"cropi_verl.verl_cpu patches verl {VERL_VERSION}; this is verl {verl.__version__}")
    ray_base.ResourcePoolManager._check_resource_available = _check_cpus_available
    # verl/utils/distributed.py initialize_global_process_group_ray: the default backend is
    # f"cpu:gloo,{device}:{backend}", i.e. "cpu:gloo,cpu:gloo" here, which torch refuses (a device given twice).
    distributed.initialize_global_process_group_ray.__defaults__ = (None, "cpu:gloo")
    # verl/trainer/ppo/v1/replay_buffer.py ReplayBuffer.__init__: the sync trainer waits for a finished batch by
    # polling TransferQueue every poll_interval=2.0 s (no config key), which is most of a CPU step; poll every 0.05 s.
    ReplayBuffer.__init__.__defaults__ = (POLL_INTERVAL_S, *ReplayBuffer.__init__.__defaults__[1:])
    transformer_impl.CPUOffloadPolicy = _unpinned_offload_policy  # the reference policy's (actor.use_kl_loss=true)
    # verl/workers/engine/fsdp/transformer_impl.py registers its FSDP engines for devices cuda and npu only;
    # the same classes run on CPU with FSDP2 and gloo.
    for model_type, cls in (("language_model", transformer_impl.FSDPEngineWithLMHead),
                            ("value_model", transformer_impl.FSDPEngineWithValueHead)):
        if "cpu" not in EngineRegistry._engines[model_type]["fsdp2"]:
            EngineRegistry.register(model_type=model_type, backend=["fsdp", "fsdp2"], device="cpu")(cls)
