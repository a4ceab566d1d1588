"""The last-blocks-only gradient (``last_layers_only``, issue 34's lever): against autograd's full gradient, whose
entries for the kept parameters it must equal (detaching the input of block L - n changes nothing after it), its
FLOP count by hand, and its range check."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from cropi_verl.influence.gradients import (PopiConfig, last_layers_only, parameter_offsets, pass_flops,
                                            popi_features)
from cropi_verl.influence.projection import make_projector
from influence_helpers import PAD, VOCAB, make_prompts, reference_gradient


def untied(seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      tie_word_embeddings=False, pad_token_id=PAD)
    return Qwen2ForCausalLM(cfg).float().eval()


@pytest.mark.parametrize("n, share_prompt", [(1, True), (2, False), (3, True)])
def test_the_kept_entries_are_the_full_gradients(n, share_prompt):
    full, model = untied(), untied()
    last_layers_only(model, n)
    kept = [name for name, _, _ in parameter_offsets(model)[0]]
    want_names = [f"model.layers.{i}." for i in range(3 - n, 3)] + ["model.norm.", "lm_head."]
    assert kept and all(any(k.startswith(w) for w in want_names) for k in kept)
    assert not any(k.startswith("model.embed_tokens") for k in kept)
    _, dim = parameter_offsets(model)
    prompts = make_prompts(3, seed=4)
    res = popi_features(model, prompts, make_projector("identity", dim), PAD,
                        PopiConfig(share_prompt=share_prompt, micro_batch_tokens=12))
    names = [name for name, _ in full.named_parameters()]
    sizes = [p.numel() for _, p in full.named_parameters()]
    for row, pr in zip(res.features, prompts):
        ref = torch.split(reference_gradient(full, pr), sizes)
        want = torch.cat([g for name, g in zip(names, ref) if name in kept])
        torch.testing.assert_close(row, want.float(), rtol=1e-4, atol=1e-6)


def test_its_flops_by_hand():
    model = untied()
    every = sum(p.numel() for p in model.parameters())
    assert pass_flops(model, 10) == 6 * every * 10
    last_layers_only(model, 1)
    d = parameter_offsets(model)[1]
    assert d < every and pass_flops(model, 10) == (2 * every + 4 * d) * 10
    model.gradient_checkpointing_enable()
    assert pass_flops(model, 10) == (2 * every + 6 * d) * 10  # the kept blocks' forward again in backward


@pytest.mark.parametrize("n", [0, 4, -1])
def test_grad_layers_outside_the_blocks_is_refused(n):
    with pytest.raises(ValueError, match=r"grad_layers=.*expected null or 1 \.\. 3"):
        last_layers_only(untied(), n)
