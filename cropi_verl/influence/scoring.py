"""Influence scores of training prompts against validation sets.

For projected training gradients F [N, k] and one projected validation gradient v [k] per set:

- ``cosine``:        score_i = <F_i, v> / (|F_i| |v|)      (the paper's default; 0 where |F_i| = 0)
- ``inner_product``: score_i = <F_i, v>

computed in float64; the result is ``{set name: [N] float64}``.
"""

from __future__ import annotations

from typing import Mapping

import torch

METRICS = ("cosine", "inner_product")


def influence_scores(
    train: torch.Tensor, val: Mapping[str, torch.Tensor], metric: str = "cosine"
) -> dict[str, torch.Tensor]:
    """Per-validation-set scores of each training row (see the module docstring)."""
    if metric not in METRICS:
        raise ValueError(f"unknown score metric {metric!r}; expected one of {METRICS}")
    f = train.double()
    if metric == "cosine":
        f = f / f.norm(dim=1, keepdim=True).clamp(min=1e-300)
    out = {}
    for name, v in val.items():
        if v.shape != (train.shape[1],):
            raise ValueError(f"validation gradient {name!r} has shape {tuple(v.shape)}, expected ({train.shape[1]},)")
        v = v.double()
        if metric == "cosine":
            norm = v.norm()
            if norm == 0:
                raise ValueError(f"validation gradient {name!r} is zero; cosine is undefined")
            v = v / norm
        out[name] = f @ v
    return out
