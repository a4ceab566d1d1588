"""HF ``generate`` sampling with left-padded batches.

``sample_chat`` returns, per prompt, ``n`` responses; each response's token ids end with EOS unless it was
truncated at ``max_new_tokens``. (Behaviour log-probs are recomputed by an exact forward pass:
``cropi_verl.influence.gradients.response_logprobs``.)
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
