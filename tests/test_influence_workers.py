"""The influence worker group (verl RayWorkerGroup on CPU): 1 and 2 workers give bit-identical features, equal to
the in-process computation at the weights sent with ``update_weights``."""

from __future__ import annotations

import pytest
import torch

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
    prompts = make_prompts(7, zero_every=3)  # 7 prompts: padded to a multiple of 2 workers
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
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers run
    try:
        ref = local_featurizer(current, proj, PAD)(prompts)
    finally:
        torch.set_num_threads(threads)
    assert manifest["projector"] == proj.config() and manifest["popi"]["micro_batch"] == PopiConfig().micro_batch
    for res in results.values():
        assert res.prompt_ids == ref.prompt_ids == [101, 102, 104, 105]
        assert res.zero_advantage == [100, 103, 106]
        assert torch.equal(res.features, ref.features)
