"""One local GRPO step against a hand-written reference: the same samples, rewards, group advantages
(r - mean) / (std + 1e-6) (unbiased std), token-mean loss -sum A_b logp_bt / #tokens, one SGD step."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cropi_verl.data.toy_task import build_toy_task
from cropi_verl.local.grpo import GRPOConfig, grpo_step
from cropi_verl.rollout.hf_backend import chat_prompt_ids, sample_chat
from policy_helpers import TASK, saved_random_policy


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    path = saved_random_policy(tmp_path_factory.mktemp("grpo") / "policy")
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)


def _reference_step(model, tok, batch, cfg, seed, lr, rewards_fn):
    prompts = [chat_prompt_ids(tok, list(p)) for p in batch["prompt"]]
    model.eval()
    gens = sample_chat(model, tok, prompts, cfg.n, cfg.temperature, 1.0, cfg.max_new_tokens, seed)
    rows = [row for _, row in batch.iterrows()]
    loss_terms, n_tokens = [], 0
    for row, group in zip(rows, gens):
        r = np.array([rewards_fn(row, tok.decode(g.response_ids, skip_special_tokens=True)) for g in group])
        adv = (r - r.mean()) / (r.std(ddof=1) + 1e-6)
        for a, g in zip(adv, group):
            ids = torch.tensor([g.prompt_ids + g.response_ids])
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            tgt = ids[0, 1:]
            resp = logp[torch.arange(len(tgt)), tgt][len(g.prompt_ids) - 1:]
            loss_terms.append(-(float(a) * resp).sum())
            n_tokens += len(g.response_ids)
    loss = torch.stack(loss_terms).sum() / n_tokens
    model.zero_grad()
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * p.grad


@pytest.mark.parametrize("micro_batch_tokens", [16384, 64, 1])
def test_grpo_step_matches_hand_written_reference(policy, monkeypatch, micro_batch_tokens):
    """The whole batch in one backward, in micro-batches of <= 64 padded positions, and one response per backward:
    the same update as the reference's single loss."""
    model, tok = policy
    batch = build_toy_task(TASK)["train"].iloc[:3]
    # a random policy never solves the task: reward = response length parity, so advantages are non-zero
    fake = lambda row, text: float(len(text) % 2)  # noqa: E731
    monkeypatch.setattr("cropi_verl.local.grpo.compute_score", lambda ds, text, gt, extra=None: fake(None, text))
    cfg = GRPOConfig(batch_size=3, n=4, max_new_tokens=8, grad_clip=1e9, clip_ratio=0.2,
                     micro_batch_tokens=micro_batch_tokens)
    ours, ref = copy.deepcopy(model), copy.deepcopy(model)
    metrics = grpo_step(ours, tok, torch.optim.SGD(ours.parameters(), lr=0.5), batch, cfg, seed=11)
    _reference_step(ref, tok, batch, cfg, 11, 0.5, fake)
    assert 0 < metrics["critic/score/mean"] < 1
    low, high = {16384: (1, 1), 64: (2, 11), 1: (12, 12)}[micro_batch_tokens]  # of the 12 responses
    assert low <= metrics["batch/micro_batches"] <= high
    moved = 0.0
    for (name, a), b, c in zip(ours.named_parameters(), ref.parameters(), model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
        moved += float((a - c).abs().sum())
    assert moved > 0


def test_kl_loss_needs_a_reference_model(policy):
    model, tok = policy
    batch = build_toy_task(TASK)["train"].iloc[:2]
    with pytest.raises(ValueError, match="reference model"):
        grpo_step(model, tok, torch.optim.SGD(model.parameters(), lr=0.0), batch,
                  GRPOConfig(batch_size=2, n=2, max_new_tokens=4, use_kl_loss=True), seed=0)



def test_step_flops_count_the_tokens_the_step_processed(policy):
    """2 P per prompt and response token sampled (the same samples, by seed) + 6 P per position of the update's
    right-padded [B, W] batch (+ 2 P per position for the reference's forward with the KL loss), by hand."""
    model, tok = policy
    batch = build_toy_task(TASK)["train"].iloc[:3]
    params = sum(p.numel() for p in model.parameters())
    for kl in (False, True):
        cfg = GRPOConfig(batch_size=3, n=4, max_new_tokens=8, use_kl_loss=kl)
        prompts = [chat_prompt_ids(tok, list(p)) for p in batch["prompt"]]
        gens = sample_chat(model, tok, prompts, cfg.n, cfg.temperature, 1.0, cfg.max_new_tokens, 7)
        lengths = [len(g.prompt_ids) + len(g.response_ids) for group in gens for g in group]
        expected = 2 * params * sum(lengths) + (6 + 2 * kl) * params * len(lengths) * max(lengths)
        trained = copy.deepcopy(model)
        metrics = grpo_step(trained, tok, torch.optim.SGD(trained.parameters(), lr=0.0), batch, cfg, seed=7,
                            ref_model=model if kl else None)
        assert metrics["compute/flops"] == expected
