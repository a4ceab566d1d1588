"""The influence worker group (verl RayWorkerGroup on CPU): 1 and 2 workers give bit-identical features, equal to
the in-process computation at the weights sent with ``update_weights``."""

from __future__ import annotations

import socket
from dataclasses import asdict

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
            if n == 1:  # a checkpoint this worker's node cannot read: one line with its node and the path
                with pytest.raises(FileNotFoundError, match=rf"influence worker 0 on node {socket.gethostname()}: "
                                                            rf"cannot read the policy at {tmp_path}/global_step_4"):
                    group.init_model(str(tmp_path / "global_step_4"), {"k": 64}, {}, PAD)
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
    assert manifest["projector"] == proj.config() and manifest["popi"] == asdict(PopiConfig())
    assert manifest["dtype"] == "float32"
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


def test_release_frees_the_model_and_init_model_loads_again(tmp_path, ray_session):
    """After ``release`` a worker holds no model (computing is refused); ``init_model`` loads again, here with
    gradient checkpointing (the worker's train-mode path), and gives the features computed before, which match the
    in-process pass; checkpointing with the prompt's KV cache is refused at load."""
    from cropi_verl.workers.group import InfluenceWorkerGroup

    tiny_model(seed=2).save_pretrained(tmp_path / "policy")
    prompts = make_prompts(3, seed=4)
    proj_cfg, popi = {"method": "identity"}, {"share_prompt": False}
    group = InfluenceWorkerGroup(1, threads=1, name_prefix="release")
    try:
        group.init_model(str(tmp_path / "policy"), proj_cfg, popi, PAD)
        before = group(prompts)
        group.release()
        with pytest.raises(RuntimeError, match="holds no model"):
            group(prompts)
        with pytest.raises(ValueError, match="share_prompt needs the prompt's KV cache"):
            group.init_model(str(tmp_path / "policy"), proj_cfg, {"share_prompt": True}, PAD,
                             gradient_checkpointing=True)
        group.init_model(str(tmp_path / "policy"), proj_cfg, popi, PAD, gradient_checkpointing=True)
        after = group(prompts)
    finally:
        group.close()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "policy", dtype=torch.float32)
    _, dim = parameter_offsets(loaded)
    ref = local_featurizer(loaded, make_projector("identity", dim), PAD, PopiConfig(share_prompt=False))(prompts)
    assert after.prompt_ids == before.prompt_ids == ref.prompt_ids
    torch.testing.assert_close(after.features, before.features, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(before.features, ref.features, rtol=1e-5, atol=1e-7)


def test_resolve_worker_precision():
    from cropi_verl.workers.group import resolve_worker_precision

    assert resolve_worker_precision("auto", "auto", use_gpu=True) == ("bfloat16", True)
    assert resolve_worker_precision("auto", "auto", use_gpu=False) == ("float32", False)
    assert resolve_worker_precision("float16", False, use_gpu=True) == ("float16", False)
    assert resolve_worker_precision("float32", True, use_gpu=False) == ("float32", True)
    with pytest.raises(ValueError, match="expected one of auto, float32, bfloat16, float16"):
        resolve_worker_precision("fp8", "auto", use_gpu=True)
