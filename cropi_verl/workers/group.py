"""``InfluenceWorkerGroup``: the influence workers as a verl ``RayWorkerGroup``, and a ``Featurizer`` over them.

CPU: ``RayResourcePool([n], use_gpu=False)``; GPU: ``use_gpu=True`` (one GPU per worker). Zero-advantage prompts
are counted on the driver and never shipped. The rest are dealt to the ranks by estimated cost (``balanced_order``),
laid out so that DP_COMPUTE_PROTO's equal contiguous chunks are those deals (short deals are topped up with empty
zero-advantage rows that cost nothing), and put back in input order. Each prompt's feature is computed alone, so
the result does not depend on the deal or the worker count. ``release()`` frees the workers' models between passes
(the workers stay up); ``resolve_worker_precision`` turns the ``cropi.workers`` ``auto`` keys into settings.
"""

from __future__ import annotations

import logging
from typing import Sequence

import ray
import torch
from verl.single_controller.ray import RayClassWithInitArgs, RayResourcePool, RayWorkerGroup

from cropi_verl.influence.gradients import PopiResult, PromptRollouts, is_zero_advantage, token_key
from cropi_verl.utils.cli import sigterm_handler_kept_across_ray_init
from cropi_verl.workers.influence_worker import InfluenceWorker, rollouts_to_proto

log = logging.getLogger(__name__)

WORKER_DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_worker_precision(dtype: str, gradient_checkpointing: bool | str, use_gpu: bool) -> tuple[str, bool]:
    """``(dtype, gradient_checkpointing)`` for the workers, ``auto`` resolved for the device: bfloat16 with
    checkpointing on a GPU, float32 without it on the CPU."""
    if dtype not in WORKER_DTYPES:
        raise ValueError(f"worker dtype {dtype!r}: expected one of {', '.join(WORKER_DTYPES)}")
    if dtype == "auto":
        dtype = "bfloat16" if use_gpu else "float32"
    return dtype, use_gpu if gradient_checkpointing == "auto" else bool(gradient_checkpointing)


class InfluenceWorkerGroup:
    """``n_workers`` influence workers (``threads`` torch threads each) on CPU or GPU."""

    def __init__(self, n_workers: int = 1, use_gpu: bool = False, threads: int = 1, name_prefix: str | None = None,
                 resource_pool: RayResourcePool | None = None):
        """``resource_pool``: place the workers in an existing pool (on GPU: the actor's, colocated with it);
        default: a new pool of ``n_workers`` bundles. ``name_prefix``: Ray names (default: random, unique)."""
        if not ray.is_initialized():  # logical CPUs: one bundle per worker, whatever the core count
            with sigterm_handler_kept_across_ray_init():  # Ray's dumps a crash report: an entry point's is one line
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

    def init_model(self, model_path: str, projector: dict, popi: dict, pad_id: int, dtype: str = "float32",
                   gradient_checkpointing: bool | str = False) -> dict:
        """Load the policy (in ``dtype``, with HF gradient checkpointing or not; ``auto`` values are resolved for
        this group's device by ``resolve_worker_precision``) and the projector on every worker, freeing the previous
        ones first; returns the feature-store manifest (projector, POPI, dtype)."""
        dtype, gradient_checkpointing = resolve_worker_precision(dtype, gradient_checkpointing, self.device == "cuda")
        manifest = self.group.init_model(model_path, projector, popi, pad_id, self.device, dtype,
                                         gradient_checkpointing)[0]
        self.k = manifest["k"]
        return manifest

    def release(self) -> None:
        """Free every worker's model and projector (and its CUDA cache); ``init_model`` loads again."""
        self.group.release()

    def update_weights(self, model: torch.nn.Module) -> "InfluenceWorkerGroup":
        """Send the current weights of ``model`` to every worker (one object-store copy); returns self, the
        ``Featurizer`` at those weights."""
        ref = ray.put({k: v.detach().cpu() for k, v in model.state_dict().items()})
        self.group.update_weights(ref)
        return self

    def __call__(self, prompts: Sequence[PromptRollouts]) -> PopiResult:
        """The ``Featurizer`` interface: POPI features of ``prompts`` computed across the workers."""
        work, zero = [], []
        for p in prompts:
            (zero if is_zero_advantage(p.rewards) else work).append(p)
        if not work:
            return PopiResult([], torch.zeros(0, self.k), [p.prompt_id for p in zero])
        order = balanced_order([popi_cost(p) for p in work], self.n_workers)
        empty = PromptRollouts(-1, [], [], [], [])  # zero-advantage: skipped by the worker before any forward
        out = self.group.compute_features(rollouts_to_proto([work[i] if i >= 0 else empty for i in order]))
        # row of each prompt in ``out``; statuses in input order
        row = {int(i): r for r, i in enumerate(out.non_tensor_batch["prompt_id"]) if i >= 0}
        status = [out.non_tensor_batch["status"][row[p.prompt_id]] for p in work]
        ok = [p.prompt_id for p, s in zip(work, status) if s == "ok"]
        rows = [row[i] for i in ok]
        return PopiResult(
            ok,
            out.batch["features"][rows] if ok else torch.zeros(0, self.k),
            [p.prompt_id for p in zero],
            [p.prompt_id for p, s in zip(work, status) if s == "nonfinite"],
            out.batch["drift"][rows] if ok else None,
            float(out.batch["flops"].sum()),
        )


def popi_cost(p: PromptRollouts) -> int:
    """Tokens one POPI gradient runs through: the prompt once, each distinct response once."""
    return len(p.prompt_ids) + sum(len(r) for r in {token_key(r): r for r in p.responses}.values())


def balanced_order(costs: Sequence[float], n_ranks: int) -> list[int]:
    """A layout of ``range(len(costs))`` (``-1`` = an empty filler row) whose ``n_ranks`` equal contiguous chunks
    have near-equal total cost: items by decreasing cost, dealt in a snake (0..n-1, n-1..0, ...); ties by index."""
    deals: list[list[int]] = [[] for _ in range(n_ranks)]
    for j, i in enumerate(sorted(range(len(costs)), key=lambda i: (-costs[i], i))):
        lap, pos = divmod(j, n_ranks)
        deals[pos if lap % 2 == 0 else n_ranks - 1 - pos].append(i)
    width = max(len(d) for d in deals)
    return [i for d in deals for i in d + [-1] * (width - len(d))]
