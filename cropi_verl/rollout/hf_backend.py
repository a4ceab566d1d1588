"""HF ``generate`` sampling (left-padded batches) and exact per-token log-probs by a forward pass.

``sample_chat`` returns, per prompt, ``n`` responses; each response's token ids end with EOS unless it was
truncated at ``max_new_tokens``. ``token_logprobs`` recomputes log pi(y_t | x, y_<t) at temperature 1 with
one right-padded forward pass, so the stored behaviour log-probs are exactly the policy's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class Generation:
    prompt_ids: list[int]
    response_ids: list[int]
    truncated: bool


def chat_prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict]) -> list[int]:
    """Token ids of a chat prompt with the generation prompt appended."""
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def sample_chat(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: Sequence[list[int]],
    n: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
) -> list[list[Generation]]:
    """Sample ``n`` responses for each prompt in one left-padded ``generate`` call seeded by ``seed``."""
    pad = tokenizer.pad_token_id
    eos = tokenizer.eos_token_id
    width = max(len(p) for p in prompt_ids)
    input_ids = torch.full((len(prompt_ids), width), pad, dtype=torch.long)
    attn = torch.zeros_like(input_ids)
    for i, p in enumerate(prompt_ids):
        input_ids[i, width - len(p) :] = torch.tensor(p)
        attn[i, width - len(p) :] = 1
    torch.manual_seed(seed)
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attn,
        do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else None,
        top_p=top_p,
        top_k=0,
        max_new_tokens=max_new_tokens,
        num_return_sequences=n,
        pad_token_id=pad,
        eos_token_id=eos,
    )
    new = out[:, width:].tolist()
    result: list[list[Generation]] = []
    for i, p in enumerate(prompt_ids):
        gens = []
        for row in new[i * n : (i + 1) * n]:
            if eos in row:
                gens.append(Generation(list(p), row[: row.index(eos) + 1], False))
            else:
                gens.append(Generation(list(p), row, True))
        result.append(gens)
    return result


def token_logprobs(
    model: PreTrainedModel,
    prompt_ids: Sequence[list[int]],
    response_ids: Sequence[list[int]],
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of each response token under ``model`` (temperature 1), with gradients if enabled.

    Returns ``(logp [B, T], mask [B, T])``, T = the longest response; position t of row b is
    log pi(response_b[t] | prompt_b, response_b[:t]), and mask is 1 where a token exists.
    """
    seqs = [list(p) + list(r) for p, r in zip(prompt_ids, response_ids)]
    width = max(len(s) for s in seqs)
    t_max = max(len(r) for r in response_ids)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        attn[i, : len(s)] = 1
    logits = model(input_ids=ids, attention_mask=attn).logits.float()
    logp_all = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    logp = torch.zeros(len(seqs), t_max, dtype=logp_all.dtype)
    mask = torch.zeros(len(seqs), t_max)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        start = len(p) - 1
        logp[i, : len(r)] = logp_all[i, start : start + len(r)]
        mask[i, : len(r)] = 1
    return logp, mask
