"""Exact cosines at a real model's size, streaming: the reference that projection fidelity is measured against.

Neither an [N, d] matrix of gradients nor a d x k projection matrix is formed. The POPI pass (``popi_features``)
streams each parameter's gradient chunk x (coordinates offset .. offset + n - 1 of g_s) into a "projector"; two
linear ones give the reference:

1. ``DenseSum`` (the validation sets): every chunk is added into one dense d-vector, so after a set's prompts
   v = (1 / n) sum_s g_s, the mean over its first ``max_prompts`` usable prompts, as ``validation_gradient`` takes.
2. ``Tee`` (the pool): one vector per prompt, [<g, v_1> .. <g, v_m>, |g|^2, P_1 g, .., P_J g], from the chunk's
   dot with each v_j's slice, its squared norm, and each projector P_i's image. Sums over chunks are exact for the
   dots and the images (linear); |g|^2 = sum over chunks of |x|^2 holds when every coordinate arrives once per
   prompt, that is with one backward per prompt (``one_backward``). Then

       exact cos(g, v_j) = <g, v_j> / (|g| |v_j|)        projected cos = cos(P_i g, P_i v_j)

``precision_at`` compares the two rankings: |top f (projected) & top f (exact)| / |top f (exact)|; ``rank_agreement``
compares two whole scorings (Spearman's rho on the prompts both scored), which has more power than a top 10% of a
few dozen prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from cropi_verl.influence.gradients import (PopiConfig, PromptRollouts, is_zero_advantage, parameter_offsets,
                                            popi_features, processed_tokens)
from cropi_verl.influence.projection import Projector, ProjectorConfig


class DenseSum(Projector):
    """Adds every chunk into ``total`` ([d] fp64) at its offset; its own output is one zero per row."""

    def __init__(self, dim: int):
        super().__init__(ProjectorConfig("dense_sum", dim, 1))
        self.total = torch.zeros(dim, dtype=torch.float64)

    def _project(self, x: torch.Tensor, offset: int) -> torch.Tensor:
        self.total[offset:offset + x.shape[1]] += x.double().sum(0)
        return torch.zeros(x.shape[0], 1)


class Tee(Projector):
    """[<x, v_j slice>]_j, |x|^2 and each projector's image of the chunk x, concatenated (module docstring)."""

    def __init__(self, directions: torch.Tensor, projectors: Sequence[Projector]):
        dim = directions.shape[1]
        super().__init__(ProjectorConfig("tee", dim, directions.shape[0] + 1 + sum(p.k for p in projectors)))
        self.directions, self.projectors = directions, list(projectors)

    def _project(self, x: torch.Tensor, offset: int) -> torch.Tensor:
        dots = x.double() @ self.directions[:, offset:offset + x.shape[1]].T
        norm2 = (x.double() ** 2).sum(1, keepdim=True)
        return torch.cat([dots.float(), norm2.float()] + [p.project(x, offset) for p in self.projectors], dim=1)


def one_backward(cfg: PopiConfig, prompts: Sequence[PromptRollouts]) -> PopiConfig:
    """``cfg`` with ``micro_batch_tokens`` raised so that every prompt's rows are one micro-batch (one backward)."""
    need = max(processed_tokens(len(p.prompt_ids), [len(r) for r in p.responses], cfg.share_prompt, cfg.packed)
               for p in prompts)
    return replace(cfg, micro_batch_tokens=max(cfg.micro_batch_tokens, need))


def validation_direction(model: torch.nn.Module, prompts: Sequence[PromptRollouts], pad_id: int, cfg: PopiConfig,
                         max_prompts: int) -> tuple[torch.Tensor, int]:
    """(v, n): the exact mean gradient of the first ``max_prompts`` usable prompts of a validation set, [d] fp64."""
    _, dim = parameter_offsets(model)
    acc, used = DenseSum(dim), 0
    for pr in prompts:
        if used == max_prompts:
            break
        if not is_zero_advantage(pr.rewards):
            used += len(popi_features(model, [pr], acc, pad_id, cfg).prompt_ids)
    if not used:
        raise ValueError("validation set has no usable prompts (all zero-advantage or non-finite)")
    return acc.total / used, used


@dataclass
class ReferenceScores:
    """Per validation set: the exact cosines of the scored pool prompts and, per projector, the projected ones."""

    prompt_ids: list[int]
    exact: dict[str, np.ndarray]
    projected: dict[str, dict[str, np.ndarray]]  # projector label -> set -> cosines


def reference_scores(model: torch.nn.Module, pool: Sequence[PromptRollouts], directions: Mapping[str, torch.Tensor],
                     projectors: Mapping[str, Projector], pad_id: int, cfg: PopiConfig,
                     progress: bool = False) -> ReferenceScores:
    """Exact and projected cosines of every usable pool prompt against each direction (module docstring)."""
    names = list(directions)
    v = torch.stack([directions[n] for n in names])
    tee = Tee(v, list(projectors.values()))
    res = popi_features(model, pool, tee, pad_id, one_backward(cfg, pool), progress=progress, total=len(pool))
    f = res.features.double()
    m = len(names)
    exact = {n: (f[:, j] / (f[:, m].sqrt() * v[j].norm()).clamp(min=1e-300)).numpy() for j, n in enumerate(names)}
    projected, col = {}, m + 1
    for label, proj in projectors.items():
        pg = f[:, col:col + proj.k]
        pg = pg / pg.norm(dim=1, keepdim=True).clamp(min=1e-300)
        projected[label] = {}
        for n in names:
            pv = proj.project(directions[n].float()).double()
            projected[label][n] = (pg @ (pv / pv.norm())).numpy()
        col += proj.k
    return ReferenceScores(res.prompt_ids, exact, projected)


def precision_at(exact: np.ndarray, approx: np.ndarray, frac: float = 0.1) -> float:
    """|top f (approx) & top f (exact)| / |top f (exact)|, top f = the round(f N) highest (ties by position)."""
    n = max(1, int(round(frac * len(exact))))
    top = lambda s: set(np.argsort(-s, kind="stable")[:n].tolist())  # noqa: E731
    return len(top(exact) & top(approx)) / n


def rank_agreement(a: Mapping[int, float], b: Mapping[int, float]) -> float:
    """Spearman's rho between two scorings {prompt id: score} on the ids both scored (ties share their mean rank):
    1 - 6 sum d_i^2 / (n (n^2 - 1)) without ties. nan when fewer than 3 ids are shared."""
    both = pd.DataFrame({"a": pd.Series(a, dtype=float), "b": pd.Series(b, dtype=float)}).dropna()
    return float(both.corr(method="spearman").loc["a", "b"]) if len(both) >= 3 else float("nan")
