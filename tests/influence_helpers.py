"""A tiny random-init Qwen2 and hand-built offline rollouts for influence tests."""

from __future__ import annotations

import random

import pandas as pd
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from cropi_verl.influence.gradients import PromptRollouts
from cropi_verl.rollout.records import RECORD_COLUMNS, Response, make_row

VOCAB, PAD = 48, 0


def tiny_model(seed: int = 0, layers: int = 1, hidden: int = 16) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      tie_word_embeddings=True, pad_token_id=PAD)
    return Qwen2ForCausalLM(cfg).float().eval()


def make_prompts(n: int, k: int = 4, seed: int = 0, zero_every: int = 0, duplicates: bool = False,
                 min_prompt: int = 2) -> list[PromptRollouts]:
    """n prompts with k responses of varying lengths, random behaviour log-probs and 0/1 rewards;
    every ``zero_every``-th prompt has all-equal rewards. With ``duplicates``, response j >= 2 repeats the tokens
    and reward of response j - 2 (its behaviour log-probs stay independent draws)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = [rng.randrange(1, VOCAB) for _ in range(rng.randint(min_prompt, 5))]
        resp = [[rng.randrange(1, VOCAB) for _ in range(rng.randint(1, 6))] for _ in range(k)]
        beh = [[-rng.uniform(1.0, 5.0) for _ in r] for r in resp]
        if zero_every and i % zero_every == 0:
            rewards = [1.0] * k
        else:
            rewards = [float(rng.random() < 0.5) for _ in range(k - 1)] + [1.0]
            rewards[0] = 0.0
        if duplicates:
            rewards[1] = 1.0
            for j in range(2, k):
                resp[j], rewards[j] = list(resp[j - 2]), rewards[j - 2]
                beh[j] = [-rng.uniform(1.0, 5.0) for _ in resp[j]]
        out.append(PromptRollouts(100 + i, prompt, resp, beh, rewards))
    return out


def rollout_table(prompts: list[PromptRollouts]) -> pd.DataFrame:
    """The offline-rollout record table (``cropi_verl.rollout.records``) of hand-built prompt rollouts."""
    rows = [make_row(p.prompt_id, "cropi_toy/add", "train", "0", p.prompt_ids,
                     [Response(r, "", lp, False) for r, lp in zip(p.responses, p.behaviour_logprobs)], p.rewards, None)
            for p in prompts]
    return pd.DataFrame(rows, columns=list(RECORD_COLUMNS))


def unflagged_table(prompts: list[PromptRollouts]) -> pd.DataFrame:
    """``rollout_table`` as a tool that flags nothing would write it: every flag "", every reward as given."""
    return rollout_table(prompts).assign(reward=[list(p.rewards) for p in prompts],
                                         flag=[[""] * len(p.rewards) for p in prompts])


def with_response(p: PromptRollouts, k: int, tokens: list[int] | None = None, reward: float | None = None,
                  remove: bool = False) -> PromptRollouts:
    """``p`` with response ``k`` replaced by ``tokens`` (log-probs -1 each) and/or ``reward``, or removed."""
    resp, beh, rew = list(p.responses), list(p.behaviour_logprobs), list(p.rewards)
    if remove:
        del resp[k], beh[k], rew[k]
    else:
        if tokens is not None:
            resp[k], beh[k] = tokens, [-1.0] * len(tokens)
        rew[k] = rew[k] if reward is None else reward
    return PromptRollouts(p.prompt_id, p.prompt_ids, resp, beh, rew)


def reference_gradient(model, pr, eps=1e-4, clip=None) -> torch.Tensor:
    """grad of -(1/K) sum_k mean_t rho_kt A_k, each response forwarded alone, via torch.autograd.grad."""
    params = [p for p in model.parameters() if p.requires_grad]
    r = torch.tensor(pr.rewards)
    adv = (r - r.mean()) / (r.std() + eps)
    total = 0.0
    for resp, beh, a in zip(pr.responses, pr.behaviour_logprobs, adv):
        ids = torch.tensor([pr.prompt_ids + resp])
        logits = model(input_ids=ids).logits[0]
        terms = []
        for t, tok in enumerate(resp):
            pos = len(pr.prompt_ids) - 1 + t
            lp = torch.log_softmax(logits[pos], -1)[tok]
            rho = torch.exp(lp - beh[t])
            term = rho * a
            if clip is not None:
                term = torch.minimum(term, rho.clamp(1 - clip, 1 + clip) * a)
            terms.append(term)
        total = total + torch.stack(terms).mean()
    loss = -total / len(pr.responses)
    grads = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)
    return torch.cat([g.reshape(-1) for g in grads])
