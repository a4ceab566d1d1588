"""Projected POPI features for a pool of prompts, computed shard by shard into a ``FeatureStore``.

Shard j holds prompts ``[j * shard_size, (j + 1) * shard_size)`` of the given order. Finished shards are
skipped on a rerun, so an interrupted pass resumes where it stopped; the result does not depend on the shard
size (each prompt's feature is computed alone).

The features themselves come from a ``Featurizer`` (prompts -> ``PopiResult``): ``local_featurizer`` runs
``popi_features`` in this process; ``cropi_verl.workers`` provides one that fans a shard out to a Ray worker group.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from cropi_verl.influence.gradients import PopiConfig, PopiResult, PromptRollouts, popi_features
from cropi_verl.influence.projection import Projector
from cropi_verl.influence.store import FeatureStore, StoredFeatures
from cropi_verl.utils.faults import kill_point

log = logging.getLogger(__name__)

Featurizer = Callable[[Sequence[PromptRollouts]], PopiResult]


def local_featurizer(model: torch.nn.Module, projector: Projector, pad_id: int, cfg: PopiConfig = PopiConfig()) -> Featurizer:
    """``popi_features`` at ``model``, in this process."""
    return partial(popi_features, model, projector=projector, pad_id=pad_id, cfg=cfg)


def features_into_store(
    featurize: Featurizer,
    prompts: Sequence[PromptRollouts],
    store: FeatureStore,
    shard_size: int = 256,
    progress: bool = False,
) -> StoredFeatures:
    """Compute the missing shards; return all shards concatenated (each finished shard is read once)."""
    n_shards = (len(prompts) + shard_size - 1) // shard_size
    shards = [store.read_shard(j) for j in range(n_shards)]
    todo = [j for j, obj in enumerate(shards) if obj is None]
    if len(todo) < n_shards:
        log.info("%s: resuming, %d of %d shards already done", store.path, n_shards - len(todo), n_shards)
    bar = tqdm(total=sum(len(prompts[j * shard_size : (j + 1) * shard_size]) for j in todo),
               desc="POPI gradients", unit="prompt", disable=not progress)
    for j in todo:
        chunk = prompts[j * shard_size : (j + 1) * shard_size]
        res = featurize(chunk)
        skipped = {"zero_advantage": res.zero_advantage, "nonfinite": res.nonfinite}
        shards[j] = store.write_shard(j, torch.tensor(res.prompt_ids, dtype=torch.int64), res.features, skipped,
                                      res.drift, res.flops)
        kill_point("feature_shard")
        bar.update(len(chunk))
    bar.close()
    stored = store.concat(shards)
    if stored.skipped.get("nonfinite"):
        log.warning("%d prompts had a non-finite gradient and were left out: %s",
                    len(stored.skipped["nonfinite"]), stored.skipped["nonfinite"][:10])
    return stored
