"""The influence worker group (verl RayWorkerGroup on CPU): 1 and 2 workers give bit-identical features, equal to
the in-process computation at the weights sent with ``update_weights``."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from cropi_verl.influence.gradients import PopiConfig, parameter_offsets
from cropi_verl.influence.pipeline import local_featurizer
from cropi_verl.influence.projection import make_projector
from influence_helpers import PAD, make_prompts, tiny_model

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_one_and_two_workers_are_bit_identical(tmp_path, ray_session):
    from cropi_verl.workers.group import InfluenceWorkerGroup

    tiny_model(seed=0).save_pretrained(tmp_path / "policy")
    current = tiny_model(seed=1)  # the "trained" policy: the workers must use these weights, not the saved ones
    prompts = make_prompts(8, zero_every=3, duplicates=True)  # 5 to compute: 2 workers get 3 + 2 and a filler row
    results = {}
    for n in (1, 2):
        group = InfluenceWorkerGroup(n, threads=1, name_prefix=f"test{n}")
        try:
            manifest = group.init_model(str(tmp_path / "policy"), {"method": "sparse_jl", "k": 64, "seed": 3}, {}, PAD)
            results[n] = group.update_weights(current)(prompts)
        finally:
            group.close()
    _, dim = parameter_offsets(current)
    proj = make_projector("sparse_jl", dim, k=64, seed=3)
    # the model as a worker builds it (HF's attention masks differ by an ulp from a directly constructed model's)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "policy", dtype=torch.float32)
    loaded.load_state_dict(current.state_dict())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers run
    try:
        ref = local_featurizer(loaded, proj, PAD)(prompts)
    finally:
        torch.set_num_threads(threads)
    assert manifest["projector"] == proj.config() and manifest["popi"]["micro_batch"] == PopiConfig().micro_batch
    for res in results.values():
        assert res.prompt_ids == ref.prompt_ids == [101, 102, 104, 105, 107]
        assert res.zero_advantage == [100, 103, 106]
        assert torch.equal(res.features, ref.features)


def test_balanced_order_hand_computed():
    from cropi_verl.workers.group import balanced_order

    # costs by index: 0:5 1:9 2:1 3:7 4:3; by cost 1, 3, 0, 4, 2; snake deal: rank0 <- 1, 4, 2 (9+3+1); rank1 <- 3, 0 (7+5)
    assert balanced_order([5, 9, 1, 7, 3], 2) == [1, 4, 2, 3, 0, -1]
    assert balanced_order([5, 9, 1, 7, 3], 1) == [1, 3, 0, 4, 2]
    assert balanced_order([2, 2], 3) == [0, 1, -1]
