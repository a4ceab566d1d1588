"""POPI gradients against an independent autograd reference (one sequence at a time, plain formulas)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from cropi_verl.influence.gradients import (
    PopiConfig,
    PromptRollouts,
    group_advantages,
    is_zero_advantage,
    micro_batches,
    parameter_offsets,
    popi_features,
    response_rows,
    validation_gradient,
)
from cropi_verl.influence.projection import make_projector
from influence_helpers import PAD, make_prompts, reference_gradient, tiny_model


@pytest.mark.parametrize("clip, tokens, chunk, share_prompt, merge, buffer, pack", [
    (None, 1 << 14, 1024, True, True, 1 << 20, True), (None, 1, 1, True, True, 1 << 20, True),
    (None, 22, 3, False, True, 300, True), (None, 22, 3, False, True, 300, False),
    (None, 1 << 14, 5, True, False, 64, True), (None, 30, 1024, False, False, 1, True),
    (None, 30, 1024, False, False, 1, False), (0.2, 20, 2, True, True, 1 << 20, True),
    (0.2, 1 << 14, 1024, False, False, 300, True), (0.2, 1 << 14, 1024, False, False, 300, False),
    (None, 22, 3, False, True, 300, "prompt_once"), (None, 1, 1, False, False, 1 << 20, "prompt_once"),
    (0.2, 1 << 14, 1024, False, False, 300, "prompt_once"),
])
def test_popi_matches_autograd_reference(clip, tokens, chunk, share_prompt, merge, buffer, pack):
    """Every path (prompt KV cache, rows packed into one, with the prompt once or not, or right-padded, duplicates
    merged or not, micro-batches of
    one row to all rows, logits in chunks of one token to all, clip, gradient staging in one segment, in several, or
    none) gives the reference gradient; the prompts repeat responses with different behaviour log-probs, have
    responses of 1 to 6 tokens (ragged rows) and include 1-token prompts."""
    model = tiny_model(layers=2)
    prompts = make_prompts(5, k=5, seed=3, duplicates=True, min_prompt=1)
    assert min(len(p.prompt_ids) for p in prompts) == 1
    _, dim = parameter_offsets(model)
    res = popi_features(model, prompts, make_projector("identity", dim), PAD,
                        PopiConfig(clip_ratio=clip, micro_batch_tokens=tokens, logit_chunk_tokens=chunk,
                                   share_prompt=share_prompt, merge_duplicates=merge, stream_buffer=buffer,
                                   pack=pack))
    assert res.prompt_ids == [p.prompt_id for p in prompts]
    for pr, feat in zip(prompts, res.features):
        ref = reference_gradient(model, pr, clip=clip)
        assert ref.abs().max() > 1e-4  # a non-trivial gradient
        torch.testing.assert_close(feat, ref, rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())  # streamed and freed


def test_unused_parameter_and_several_backwards_per_prompt():
    """A parameter backward never reaches keeps its staging segment open across micro-batches: the segment's other
    gradients must add up there and be projected at the end (its own coordinates stay 0)."""
    model = tiny_model(layers=2)
    model.model.unused = torch.nn.Parameter(torch.ones(3))
    prompts = make_prompts(3, k=5, seed=4, duplicates=True)
    _, dim = parameter_offsets(model)
    res = popi_features(model, prompts, make_projector("identity", dim), PAD, PopiConfig(micro_batch_tokens=1))
    for pr, feat in zip(prompts, res.features):
        torch.testing.assert_close(feat, reference_gradient(model, pr), rtol=1e-4, atol=1e-6)


def test_projected_equals_projection_of_reference():
    model = tiny_model(1, layers=2)
    prompts = make_prompts(3, k=4, seed=1)
    _, dim = parameter_offsets(model)
    proj = make_projector("sparse_jl", dim, k=64, seed=3)
    res = popi_features(model, prompts, proj, PAD)
    for pr, feat in zip(prompts, res.features):
        torch.testing.assert_close(feat, proj.project(reference_gradient(model, pr)), rtol=1e-4, atol=1e-6)


def test_zero_advantage_detected_before_backward():
    model = tiny_model()
    prompts = make_prompts(6, zero_every=3)
    calls = []
    handle = model.model.embed_tokens.weight.register_hook(lambda g: calls.append(1))
    _, dim = parameter_offsets(model)
    res = popi_features(model, prompts, make_projector("sparse_jl", dim, k=8), PAD)
    handle.remove()
    assert res.zero_advantage == [100, 103]
    assert res.prompt_ids == [101, 102, 104, 105]
    assert len(calls) == 4  # one backward per non-zero prompt (the default budget holds all K rows)
    assert is_zero_advantage([0.0, 0.0]) and is_zero_advantage([1.0]) and not is_zero_advantage([0.0, 1.0])


def test_response_rows_merge_duplicates_hand_computed():
    # y_0 = y_2 = [5, 6] with A = (-1, 1, 2) and beta_0 = (-1, -2), beta_2 = (-1.5, -2): one row, ref = beta_0,
    # coef_t = (A_0 + A_2 exp(ref_t - beta_2,t)) / 2 = ((-1 + 2 e^0.5) / 2, (-1 + 2) / 2); y_1 keeps A_1 / |y_1|
    pr = PromptRollouts(1, [3], [[5, 6], [7], [5, 6]], [[-1.0, -2.0], [-0.5], [-1.5, -2.0]], [0.0, 1.0, 1.0])
    merged = response_rows(pr, [-1.0, 1.0, 2.0], merge=True)
    assert [r.tokens for r in merged] == [[5, 6], [7]] and merged[0].ref == [-1.0, -2.0]
    assert merged[0].coef == pytest.approx([(-1 + 2 * math.exp(0.5)) / 2, 0.5]) and merged[1].coef == [1.0]
    plain = response_rows(pr, [-1.0, 1.0, 2.0], merge=False)
    assert [r.coef for r in plain] == [[-0.5, -0.5], [1.0], [1.0, 1.0]]


def test_group_advantages_hand_computed():
    # r = [0, 1, 1, 0]: mean 0.5, unbiased std = sqrt(1/3) = 0.57735
    a = group_advantages([0.0, 1.0, 1.0, 0.0], eps=0.0)
    torch.testing.assert_close(a, torch.tensor([-0.866025, 0.866025, 0.866025, -0.866025]), rtol=1e-5, atol=1e-6)


def test_validation_gradient_is_mean_and_rejects_empty():
    model = tiny_model()
    _, dim = parameter_offsets(model)
    res = popi_features(model, make_prompts(3), make_projector("identity", dim), PAD)
    torch.testing.assert_close(validation_gradient(res), res.features.mean(0))
    torch.testing.assert_close(validation_gradient(res, max_prompts=1), res.features[0])
    empty = popi_features(model, make_prompts(2, zero_every=1), make_projector("identity", dim), PAD)
    with pytest.raises(ValueError, match="no usable prompts"):
        validation_gradient(empty)



def _count_calls(module: torch.nn.Module, out: list) -> torch.utils.hooks.RemovableHandle:
    """Appends (rows of the first input, training flag) to ``out`` at every call of ``module`` (a pre-hook: a
    checkpoint's recomputation stops once it has what backward needs, before the call returns)."""
    return module.register_forward_pre_hook(lambda m, args: out.append((args[0].shape[-2], m.training)))


def _identity_features(model, prompts, **cfg) -> torch.Tensor:
    _, dim = parameter_offsets(model)
    return popi_features(model, prompts, make_projector("identity", dim), PAD, PopiConfig(**cfg)).features


def test_micro_batches_hand_computed():
    # lengths by row 0:3 1:5 2:1 3:5, longest first 1, 3, 0, 2; prompt of 2 tokens
    # plain, budget 14: [1, 3] costs 2 x (2 + 5) = 14, + row 0 would cost 3 x 7 = 21; [0, 2] costs 2 x (2 + 3) = 10
    assert micro_batches([3, 5, 1, 5], 2, 14, share_prompt=False) == [[1, 3], [0, 2]]
    # shared, budget 12: [1, 3] costs 1 + 2 x 5 = 11, + row 0: 1 + 3 x 5 = 16; [0, 2]: 1 + 2 x 3 = 7
    assert micro_batches([3, 5, 1, 5], 2, 12, share_prompt=True) == [[1, 3], [0, 2]]
    assert micro_batches([3, 5, 1, 5], 2, 1, share_prompt=True) == [[1], [3], [0], [2]]  # a row over budget alone
    assert micro_batches([3, 5, 1, 5], 2, 1 << 20, share_prompt=False) == [[1, 3, 0, 2]]
    # packed, budget 19: [1, 3, 0] costs (2 + 5) + (2 + 5) + (2 + 3) = 19 real tokens (padded: 21), + row 2: 22
    assert micro_batches([3, 5, 1, 5], 2, 19, share_prompt=False, packed=True) == [[1, 3, 0], [2]]
    # the prompt once, budget 14: [1, 3, 0] costs 1 + 5 + 5 + 3 = 14, + row 2: 15
    assert micro_batches([3, 5, 1, 5], 2, 14, share_prompt=False, packed="prompt_once") == [[1, 3, 0], [2]]


@pytest.mark.parametrize("share_prompt", [True, False])
def test_token_budgets_give_the_reference_features(share_prompt):
    """A 1-token budget (one row per forward), a middle one and a huge one (one forward per prompt) all give the
    autograd reference. Tolerance: the budgets only change how the fp32 sums are grouped (rows per forward,
    micro-batches added by the projection): measured <= 3e-7 off on coordinates up to 0.7, a few fp32 ulps; atol
    1e-6 + rtol 1e-4 holds that with margin, while a missing or double-counted row would be off by its whole
    contribution."""
    model = tiny_model(layers=2)
    prompts = make_prompts(4, k=6, seed=7, duplicates=True)
    refs = [reference_gradient(model, pr) for pr in prompts]
    layer_calls = []
    handle = _count_calls(model.model.layers[0], layer_calls)
    forwards = []
    for budget in (1, 16, 1 << 20):
        layer_calls.clear()
        feats = _identity_features(model, prompts, micro_batch_tokens=budget, share_prompt=share_prompt,
                                   merge_duplicates=False)
        for feat, ref in zip(feats, refs):
            torch.testing.assert_close(feat, ref, rtol=1e-4, atol=1e-6)
        forwards.append(len(layer_calls) // (2 if share_prompt else 1))  # shared: + the prompt's, per micro-batch
    handle.remove()
    rows = sum(len(pr.responses) for pr in prompts)
    assert forwards[0] == rows and forwards[2] == len(prompts) and len(prompts) < forwards[1] < rows


def test_logits_are_computed_in_checkpointed_chunks():
    """With ``logit_chunk_tokens=2`` the output embedding sees at most 2 positions per call, each chunk twice (its
    forward, then its recomputation in backward), and the features are the reference."""
    model = tiny_model(layers=2)
    prompts = make_prompts(2, k=4, seed=2)
    calls = []
    handle = _count_calls(model.lm_head, calls)
    feats = _identity_features(model, prompts, logit_chunk_tokens=2, merge_duplicates=False)
    handle.remove()
    tokens = [sum(len(r) for r in pr.responses) for pr in prompts]  # one micro-batch per prompt
    assert max(n for n, _ in calls) <= 2 and len(calls) == 2 * sum(math.ceil(t / 2) for t in tokens)
    for pr, feat in zip(prompts, feats):
        torch.testing.assert_close(feat, reference_gradient(model, pr), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("pack", [True, "prompt_once"])
def test_gradient_checkpointing_recomputes_layers_and_keeps_the_features(pack):
    """Under HF gradient checkpointing each decoder layer runs twice per micro-batch (forward, then recomputed in
    backward, in train mode) instead of once, and the features equal those without it (same fp32 operations,
    recomputed: tight tolerance) and the reference; the model's mode is restored. The prompt once in a packed row
    needs no KV cache, so it runs under checkpointing too."""
    model = tiny_model(layers=2)
    prompts = make_prompts(3, k=4, seed=5, duplicates=True)
    cfg = dict(share_prompt=False, micro_batch_tokens=30, pack=pack)
    calls = []
    handle = _count_calls(model.model.layers[0], calls)
    plain = _identity_features(model, prompts, **cfg)
    n_plain, calls[:] = len(calls), []
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ckpt = _identity_features(model, prompts, **cfg)
    handle.remove()
    assert len(calls) == 2 * n_plain and all(training for _, training in calls) and not model.training
    torch.testing.assert_close(ckpt, plain, rtol=1e-6, atol=1e-9)
    for pr, feat in zip(prompts, ckpt):
        torch.testing.assert_close(feat, reference_gradient(model, pr), rtol=1e-4, atol=1e-6)


def test_gradient_checkpointing_refuses_the_prompt_cache_and_dropout():
    model = tiny_model()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    prompts = make_prompts(1)
    with pytest.raises(ValueError, match="share_prompt needs the prompt's KV cache"):
        _identity_features(model, prompts, share_prompt=True)
    model.config.attention_dropout = 0.1
    with pytest.raises(ValueError, match=r"dropout is active \(\['config.attention_dropout=0.1'\]\)"):
        _identity_features(model, prompts, share_prompt=False)
    model.config.attention_dropout = 0.0
    model.model.drop = torch.nn.Dropout(0.2)
    with pytest.raises(ValueError, match=r"model.drop.p=0.2"):
        _identity_features(model, prompts, share_prompt=False)
    assert not model.training


def test_bf16_model_features_are_fp32_and_near_the_fp32_reference():
    """A bf16 model: log-probs and loss in fp32, features fp32 and within bf16 rounding of the fp32 reference
    (relative error < 3%: bf16's unit roundoff is 2^-8 = 0.4% per operation; measured 0.7%)."""
    model = tiny_model(layers=2)
    prompts = make_prompts(2, k=4, seed=1)
    refs = torch.stack([reference_gradient(model, pr) for pr in prompts])
    feats = _identity_features(model.to(torch.bfloat16), prompts)
    assert feats.dtype == torch.float32
    assert ((feats - refs).norm(dim=1) / refs.norm(dim=1)).max() < 0.03


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("buffer", [1, 300, 1 << 20])
def test_popi_on_cuda_matches_the_cpu_reference(buffer):
    """The pass on a GPU (projections on a side stream, the CUDA sparse_jl kernel) gives P of the CPU reference."""
    model = tiny_model(2, layers=2)
    prompts = make_prompts(4, k=5, seed=6, duplicates=True)
    _, dim = parameter_offsets(model)
    proj = make_projector("sparse_jl", dim, k=64, seed=5)
    res = popi_features(model.cuda(), prompts, proj, PAD, PopiConfig(stream_buffer=buffer))
    model.cpu()
    for pr, feat in zip(prompts, res.features):
        torch.testing.assert_close(feat, proj.project(reference_gradient(model, pr)), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("merge", [True, False])
def test_drift_meter_against_a_hand_computed_ess(merge):
    """Behaviour log-probs = the model's own (a direct HF forward) minus c_k per token: the sequence-level log ratio of
    response k is c_k |y_k|, its token ratios exp(c_k), so ESS/K = (sum w)^2 / (K sum w^2) with w_k = exp(c_k |y_k|)
    and w_k = exp(c_k); the largest token ratio is exp(max c_k). At beta itself (c = 0) all three are 1."""
    import numpy as np

    model = tiny_model()
    base = make_prompts(3, k=4, duplicates=True)  # identical responses: merged into one row, each copy its own ratio
    offsets = [[0.0, 0.3, -0.2, 0.1], [0.0, 0.0, 0.0, 0.0], [0.5, -0.5, 0.25, 0.0]]
    prompts = []
    for p, c in zip(base, offsets):
        beh = []
        for r, ck in zip(p.responses, c):
            ids = torch.tensor([list(p.prompt_ids) + list(r)])
            logp = torch.log_softmax(model(ids).logits[0].double(), -1)  # position t predicts token t + 1
            own = [float(logp[len(p.prompt_ids) - 1 + t, tok]) for t, tok in enumerate(r)]
            beh.append([x - ck for x in own])
        prompts.append(replace(p, behaviour_logprobs=beh))
    _, dim = parameter_offsets(model)
    res = popi_features(model, prompts, make_projector("sparse_jl", dim, k=16), PAD,
                        PopiConfig(merge_duplicates=merge))
    assert res.prompt_ids == [p.prompt_id for p in prompts]
    for row, p, c in zip(res.drift.numpy(), prompts, offsets):
        lengths, c = np.array([len(r) for r in p.responses]), np.array(c)
        ess = lambda w: w.sum() ** 2 / (w * w).sum() / len(w)  # noqa: E731
        expected = [ess(np.exp(c * lengths)), ess(np.exp(c)), np.exp(c.max())]
        assert row == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert res.drift[1].tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-6)  # at beta


@pytest.mark.parametrize("share, pack", [(False, False), (False, True), (True, True), (False, "prompt_once")])
def test_pass_flops_count_the_positions_each_micro_batch_runs(share, pack):
    """With a budget that fits a prompt's K responses in one micro-batch: K rows of prompt + longest response, their
    real tokens (packed), the prompt's prefix once and K rows of its last token + the longest response (shared), or
    the prefix once and the K responses' tokens (the prompt once in a packed row); 6 P per
    position, 8 P with gradient checkpointing (the forward again in backward). Zero-advantage prompts cost nothing."""
    model = tiny_model()
    prompts = make_prompts(5, k=3, zero_every=4)  # prompts 0 and 4 are zero-advantage
    _, dim = parameter_offsets(model)
    cfg = PopiConfig(share_prompt=share, merge_duplicates=False, micro_batch_tokens=10**6, pack=pack)
    res = popi_features(model, prompts, make_projector("sparse_jl", dim, k=16), PAD, cfg)
    positions = 0
    for p in prompts[1:4]:
        longest, n_p = max(len(r) for r in p.responses), len(p.prompt_ids)
        positions += (n_p - 1 + 3 * longest if share
                      else n_p - 1 + sum(len(r) for r in p.responses) if pack == "prompt_once"
                      else sum(n_p + len(r) for r in p.responses) if pack else 3 * (n_p + longest))
    assert res.zero_advantage == [100, 104] and res.flops == 6 * dim * positions
    if not share and not pack:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        again = popi_features(model, prompts, make_projector("sparse_jl", dim, k=16), PAD, cfg)
        assert again.flops == 8 * dim * positions
