"""``InfluenceWorkerGroup``: the influence workers as a verl ``RayWorkerGroup``, and a ``Featurizer`` over them.

CPU: ``RayResourcePool([n], use_gpu=False)``; GPU: ``use_gpu=True`` (one GPU per worker). A shard of prompts is
padded to a multiple of the world size (``pad_dataproto_to_divisor``), split by DP_COMPUTE_PROTO, and unpadded.
"""

from __future__ import annotations

import logging
from typing import Sequence

import ray
import torch
from verl.protocol import pad_dataproto_to_divisor, unpad_dataproto
from verl.single_controller.ray import RayClassWithInitArgs, RayResourcePool, RayWorkerGroup

from cropi_verl.influence.gradients import PopiResult, PromptRollouts
from cropi_verl.workers.influence_worker import InfluenceWorker, rollouts_to_proto

log = logging.getLogger(__name__)


class InfluenceWorkerGroup:
    """``n_workers`` influence workers (``threads`` torch threads each) on CPU or GPU."""

    def __init__(self, n_workers: int = 1, use_gpu: bool = False, threads: int = 1, name_prefix: str | None = None,
                 resource_pool: RayResourcePool | None = None):
        """``resource_pool``: place the workers in an existing pool (on GPU: the actor's, colocated with it);
        default: a new pool of ``n_workers`` bundles. ``name_prefix``: Ray names (default: random, unique)."""
        if not ray.is_initialized():  # logical CPUs: one bundle per worker, whatever the core count
            ray.init(num_cpus=max(8, n_workers), include_dashboard=False, log_to_driver=False)
        self.owns_pool = resource_pool is None
        self.pool = resource_pool or RayResourcePool([n_workers], use_gpu=use_gpu, max_colocate_count=1,
                                                     name_prefix=name_prefix)
        cls = RayClassWithInitArgs(ray.remote(InfluenceWorker), threads=threads)
        self.group = RayWorkerGroup(self.pool, cls, name_prefix=name_prefix, device_name="cuda" if use_gpu else "cpu")
        self.device = "cuda" if use_gpu else "cpu"
        self.n_workers = self.group.world_size

    def close(self) -> None:
        """Kill the workers and release their placement group (Ray itself stays up)."""
        for w in self.group.workers:
            ray.kill(w)
        for pg in (self.pool.pgs or []) if self.owns_pool else []:
            ray.util.remove_placement_group(pg)

    def init_model(self, model_path: str, projector: dict, popi: dict, pad_id: int) -> dict:
        """Load the policy and projector on every worker; returns the feature-store manifest (projector, POPI)."""
        return self.group.init_model(model_path, projector, popi, pad_id, self.device)[0]

    def update_weights(self, model: torch.nn.Module) -> "InfluenceWorkerGroup":
        """Send the current weights of ``model`` to every worker (one object-store copy); returns self, the
        ``Featurizer`` at those weights."""
        ref = ray.put({k: v.detach().cpu() for k, v in model.state_dict().items()})
        self.group.update_weights(ref)
        return self

    def __call__(self, prompts: Sequence[PromptRollouts]) -> PopiResult:
        """The ``Featurizer`` interface: POPI features of ``prompts`` computed across the workers."""
        if not prompts:
            return PopiResult([], torch.zeros(0, 0))
        data, pad = pad_dataproto_to_divisor(rollouts_to_proto(list(prompts)), self.n_workers)
        out = unpad_dataproto(self.group.compute_features(data), pad)
        status, ids = out.non_tensor_batch["status"], out.non_tensor_batch["prompt_id"]
        ok = status == "ok"
        return PopiResult(
            [int(i) for i in ids[ok]],
            out.batch["features"][torch.from_numpy(ok)],
            [int(i) for i in ids[status == "zero_advantage"]],
            [int(i) for i in ids[status == "nonfinite"]],
        )
