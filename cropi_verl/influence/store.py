"""Sharded, atomic, resumable feature store for projected gradients.

Layout of a store directory::

    manifest.json          what the features are: model step, projector config, seed, k, ... (written first)
    shard_00000.pt ...     {"shard": i, "prompt_ids": [n] int64, "features": [n, k] float32,
                            "skipped": {reason: [m] int64}, "drift": [n, 3] float64, "flops": float},
                           each written atomically (``drift``: the prompts' ``DRIFT_COLUMNS``, ``flops``: the pass's
                           over the shard; NaN in shards written before they existed)

Opening a store with a manifest that differs from the one on disk is a ``FeatureStoreMismatch`` naming the
differing keys: features from another model step or projector are never mixed. A shard that cannot be read
back whole (truncated, wrong shape, wrong index) counts as not done, is logged, and is recomputed.
"""

from __future__ import annotations

import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cropi_verl.influence.gradients import nan_drift
from cropi_verl.utils.atomic import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)


class FeatureStoreMismatch(ValueError):
    pass


@dataclass
class StoredFeatures:
    """A store's shards concatenated: prompt ids ``[n]``, features ``[n, k]``, skipped ids by reason, drift rows
    ``[n, 3]`` (``DRIFT_COLUMNS``) and the pass's FLOPs over them (NaN when a shard predates the count)."""

    prompt_ids: torch.Tensor
    features: torch.Tensor
    skipped: dict[str, list[int]]
    drift: torch.Tensor
    flops: float


class FeatureStore:
    def __init__(self, path: str | Path, manifest: dict[str, Any]):
        self.path = Path(path)
        self.manifest = json.loads(json.dumps(manifest, sort_keys=True, default=str))
        mpath = self.path / "manifest.json"
        if mpath.is_file():
            on_disk = json.loads(mpath.read_text())
            diff = sorted(k for k in set(on_disk) | set(self.manifest) if on_disk.get(k) != self.manifest.get(k))
            if diff:
                detail = "; ".join(f"{k}: store has {on_disk.get(k)!r}, run has {self.manifest.get(k)!r}" for k in diff)
                raise FeatureStoreMismatch(f"{mpath}: feature store was written for a different run ({detail}); "
                                           f"delete {self.path} to recompute its features")
        else:
            atomic_write_json(self.manifest, mpath)

    def shard_path(self, i: int) -> Path:
        return self.path / f"shard_{i:05d}.pt"

    def read_shard(self, i: int) -> dict[str, Any] | None:
        """Shard i (``prompt_ids``, ``features``, ``skipped``), or None if missing or unreadable (logged)."""
        p = self.shard_path(i)
        if not p.is_file():
            return None
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
            ids, feats = obj["prompt_ids"], obj["features"]
            if not isinstance(obj["skipped"], dict):
                raise ValueError("'skipped' is not a dict")
            k = self.manifest.get("k")
            if obj["shard"] != i or feats.shape != (len(ids), k if k is not None else feats.shape[1]):
                raise ValueError(f"shard index/shape mismatch: {obj['shard']}, {tuple(feats.shape)}")
            return obj
        except Exception as e:  # a corrupt shard is redone, never read
            log.warning("%s: unreadable shard (%s); it will be recomputed", p, e)
            return None

    def has_shard(self, i: int) -> bool:
        return self.read_shard(i) is not None

    def write_shard(
        self, i: int, prompt_ids: torch.Tensor, features: torch.Tensor, skipped: dict[str, list[int]] | None = None,
        drift: torch.Tensor | None = None, flops: float = math.nan,
    ) -> None:
        obj = {
            "shard": i,
            "prompt_ids": prompt_ids.to(torch.int64),
            "features": features.float(),
            "skipped": {r: torch.tensor(v, dtype=torch.int64) for r, v in (skipped or {}).items()},
            "drift": nan_drift(len(prompt_ids)) if drift is None else drift.double(),
            "flops": float(flops),
        }
        buf = io.BytesIO()
        torch.save(obj, buf)
        atomic_write_bytes(buf.getvalue(), self.shard_path(i))
        return obj

    def load(self, n_shards: int) -> StoredFeatures:
        """Shards 0..n_shards-1 concatenated in order."""
        shards = []
        for i in range(n_shards):
            got = self.read_shard(i)
            if got is None:
                raise FileNotFoundError(f"{self.shard_path(i)}: shard missing or unreadable; rerun to complete the store")
            shards.append(got)
        return self.concat(shards)

    def concat(self, shards: list[dict[str, Any]]) -> StoredFeatures:
        """Shard objects (in order) as one ``StoredFeatures``."""
        ids, feats, skipped = [], [], {}
        for got in shards:
            ids.append(got["prompt_ids"])
            feats.append(got["features"])
            for reason, v in got["skipped"].items():
                skipped.setdefault(reason, []).extend(v.tolist())
        k = self.manifest.get("k") or 0
        drift = [got.get("drift", nan_drift(len(got["prompt_ids"]))) for got in shards]
        return StoredFeatures(torch.cat(ids) if ids else torch.zeros(0, dtype=torch.int64),
                              torch.cat(feats) if feats else torch.zeros(0, k), skipped,
                              torch.cat(drift) if drift else nan_drift(0),
                              sum(float(got.get("flops", math.nan)) for got in shards))
