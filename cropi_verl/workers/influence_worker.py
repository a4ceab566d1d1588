"""The influence worker: a verl ``Worker`` that computes projected POPI gradients for its shard of prompts.

Driven by a ``RayWorkerGroup`` (``InfluenceWorkerGroup``):

- ``init_model(model_path, ..., dtype, gradient_checkpointing)`` (ONE_TO_ALL): free the previous model, load the
  policy architecture and weights in ``dtype`` (HF gradient checkpointing optional), build the projector; a local
  (absolute) path this worker cannot read fails with one line naming its rank, node and the path;
- ``update_weights(state_dict)`` (ONE_TO_ALL): receive the *current* policy weights at a stage boundary, so no
  worker restarts between stages;
- ``compute_features(data)`` (DP_COMPUTE_PROTO): the batch of prompts is split across ranks; each rank returns,
  per prompt, its feature ``P g_s`` (``[k]`` float32; zeros when skipped), its drift (``DRIFT_COLUMNS``; NaN when
  skipped) and a status (``ok``, ``zero_advantage``, ``nonfinite``), and the rank's pass FLOPs on its first row;
- ``release()`` (ONE_TO_ALL): free the model and projector (and the CUDA cache) between passes.

Each prompt's feature is computed alone (``popi_features``), and every worker runs with the same thread count, so the
result is bit-identical for any number of workers.
"""

from __future__ import annotations

import gc
import os
import socket

import numpy as np
import torch
from verl import DataProto
from verl.single_controller.base import Worker
from verl.single_controller.base.decorator import Dispatch, register

from cropi_verl.curriculum.influence_pass import store_manifest
from cropi_verl.influence.gradients import (
    PopiConfig,
    PromptRollouts,
    checkpointing_conflict,
    last_layers_only,
    nan_drift,
    parameter_offsets,
    popi_features,
)
from cropi_verl.influence.projection import make_projector
from cropi_verl.utils.faults import kill_point

ROLLOUT_KEYS = ("prompt_id", "prompt_ids", "responses", "behaviour_logprobs", "rewards")


def rollouts_to_proto(prompts: list[PromptRollouts]) -> DataProto:
    """Ragged prompt rollouts as a DataProto of object arrays (one row per prompt)."""
    cols = {}
    for key in ROLLOUT_KEYS:
        arr = np.empty(len(prompts), dtype=object)
        arr[:] = [getattr(p, key) for p in prompts]
        cols[key] = arr
    cols["prompt_id"] = cols["prompt_id"].astype(np.int64)
    return DataProto.from_single_dict(cols)


def proto_to_rollouts(data: DataProto) -> list[PromptRollouts]:
    nt = data.non_tensor_batch
    return [PromptRollouts(int(nt["prompt_id"][i]), *(list(nt[k][i]) for k in ROLLOUT_KEYS[1:])) for i in range(len(data))]


class InfluenceWorker(Worker):
    """One rank of the influence worker group (see the module docstring)."""

    def __init__(self, threads: int = 1) -> None:
        super().__init__()
        torch.set_num_threads(threads)
        self.model: torch.nn.Module | None = None
        self.projector = None

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def init_model(self, model_path: str, projector: dict, popi: dict, pad_id: int, device: str = "cpu",
                   dtype: str = "float32", gradient_checkpointing: bool = False) -> dict:
        """Free the previous model, then load the policy at ``model_path`` in ``dtype`` (a torch dtype name; the
        POPI loss stays fp32) with HF gradient checkpointing or not, and build
        ``make_projector(dim=#params, **projector)`` (#params: the trainable ones, after ``popi.grad_layers``);
        returns the feature-store manifest of this setup (``store_manifest``, with ``dtype``)."""
        from transformers import AutoModelForCausalLM

        if os.path.isabs(model_path) and not os.path.isfile(os.path.join(model_path, "config.json")):
            raise FileNotFoundError(f"influence worker {self.rank} on node {socket.gethostname()}: cannot read the "
                                    f"policy at {model_path}: on several nodes trainer.default_local_dir must be on a "
                                    "filesystem that every node mounts at the same path")
        popi_cfg = PopiConfig(**popi)
        conflict = checkpointing_conflict(popi_cfg.share_prompt, gradient_checkpointing)
        if conflict:
            raise ValueError(conflict)
        self.release()
        self.popi = popi_cfg
        self.device = device
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).to(device)
        last_layers_only(self.model, popi_cfg.grad_layers)
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        _, dim = parameter_offsets(self.model)
        self.projector = make_projector(dim=dim, **projector)
        self.pad_id = pad_id
        return store_manifest(self.projector, self.popi, dtype=dtype)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def release(self) -> None:
        """Free the model and projector, and return the freed CUDA memory to the device (``empty_cache``)."""
        self.model = self.projector = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _loaded(self) -> torch.nn.Module:
        """The model, or a clear error once released."""
        if self.model is None:
            raise RuntimeError("the influence worker holds no model (released): call init_model first")
        return self.model

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def update_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load the current policy's weights (strict: every key must match the model)."""
        self._loaded().load_state_dict(state_dict, strict=True)

    @register(dispatch_mode=Dispatch.DP_COMPUTE_PROTO)
    def compute_features(self, data: DataProto) -> DataProto:
        """Per prompt: ``features`` [n, k] and ``status`` (see the module docstring)."""
        prompts = proto_to_rollouts(data)
        kill_point("influence_worker")
        res = popi_features(self._loaded(), prompts, self.projector, self.pad_id, self.popi)
        row = {int(p): i for i, p in enumerate(res.prompt_ids)}
        feats = torch.zeros(len(prompts), self.projector.k)
        drift = nan_drift(len(prompts))
        status = np.empty(len(prompts), dtype=object)
        zero = set(res.zero_advantage)
        for i, p in enumerate(prompts):
            if p.prompt_id in row:
                feats[i], drift[i] = res.features[row[p.prompt_id]], res.drift[row[p.prompt_id]]
                status[i] = "ok"
            else:
                status[i] = "zero_advantage" if p.prompt_id in zero else "nonfinite"
        flops = torch.zeros(len(prompts), dtype=torch.float64)
        flops[:1] = res.flops  # the rank's total on its first row: the group sums the column
        return DataProto.from_single_dict({"features": feats, "drift": drift, "flops": flops,
                                           "prompt_id": data.non_tensor_batch["prompt_id"], "status": status})
