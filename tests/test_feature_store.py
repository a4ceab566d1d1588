"""The feature store: resumes from finished shards, redoes corrupt ones, rejects another run's manifest."""

from __future__ import annotations

import pytest
import torch

from cropi_verl.influence.gradients import parameter_offsets
from cropi_verl.influence.pipeline import features_into_store, local_featurizer
from cropi_verl.influence.projection import make_projector
from cropi_verl.influence.store import FeatureStore, FeatureStoreMismatch
from influence_helpers import PAD, make_prompts, tiny_model


def _manifest(proj, step=0):
    return {"model_step": step, "projector": proj.config(), "k": proj.k, "seed": 0}


def test_interrupted_pass_resumes_and_matches(tmp_path):
    model = tiny_model()
    prompts = make_prompts(10, zero_every=4)
    _, dim = parameter_offsets(model)
    proj = make_projector("sparse_jl", dim, k=32)
    real = local_featurizer(model, proj, PAD)
    ref = features_into_store(real, prompts, FeatureStore(tmp_path / "a", _manifest(proj)), 3)
    calls = []

    def dying(chunk):  # the third shard "crashes"
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(chunk)

    store_b = FeatureStore(tmp_path / "b", _manifest(proj))
    with pytest.raises(KeyboardInterrupt):
        features_into_store(dying, prompts, store_b, 3)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["manifest.json", "shard_00000.pt", "shard_00001.pt"]
    calls.clear()
    counting = lambda chunk: (calls.append(1), real(chunk))[1]  # noqa: E731
    got = features_into_store(counting, prompts, FeatureStore(tmp_path / "b", _manifest(proj)), 3)
    assert len(calls) == 2  # only shards 2 and 3 recomputed
    assert torch.equal(got.prompt_ids, ref.prompt_ids) and torch.equal(got.features, ref.features)
    assert torch.equal(got.drift, ref.drift) and got.flops == ref.flops > 0  # as if computed in one go
    assert got.skipped == ref.skipped and got.skipped["zero_advantage"] == [100, 104, 108]


def test_corrupt_shard_is_redone(tmp_path):
    model = tiny_model()
    prompts = make_prompts(4)
    _, dim = parameter_offsets(model)
    proj = make_projector("sparse_jl", dim, k=16)
    store = FeatureStore(tmp_path, _manifest(proj))
    featurize = local_featurizer(model, proj, PAD)
    ref = features_into_store(featurize, prompts, store, 2).features
    data = store.shard_path(1).read_bytes()
    store.shard_path(1).write_bytes(data[: len(data) // 2])  # truncated on disk
    assert not store.has_shard(1)
    again = features_into_store(featurize, prompts, store, 2).features
    assert torch.equal(again, ref)


def test_manifest_mismatch_is_a_clear_error(tmp_path):
    proj = make_projector("sparse_jl", 100, k=16)
    FeatureStore(tmp_path, _manifest(proj, step=10))
    with pytest.raises(FeatureStoreMismatch, match="model_step: store has 10, run has 20"):
        FeatureStore(tmp_path, _manifest(proj, step=20))
    other = make_projector("sparse_jl", 100, k=16, seed=1)
    with pytest.raises(FeatureStoreMismatch, match="projector: store has"):
        FeatureStore(tmp_path, _manifest(other, step=10))
    FeatureStore(tmp_path, _manifest(proj, step=10))  # the same run reopens fine


def test_store_of_the_previous_projector_version_is_refused(tmp_path):
    """A store written before sparse_jl's one-sum-per-bucket change (no ``version`` in its projector config) holds
    features with other rounding: resuming into it would mix them."""
    proj = make_projector("sparse_jl", 100, k=16)
    old = _manifest(proj, step=10)
    old["projector"] = {k: v for k, v in old["projector"].items() if k != "version"}
    FeatureStore(tmp_path, old)
    with pytest.raises(FeatureStoreMismatch, match=f"projector: store has .*delete {tmp_path} to recompute"):
        FeatureStore(tmp_path, _manifest(proj, step=10))
