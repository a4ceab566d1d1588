"""HF ``generate`` sampling with left-padded batches, and beta's log-probs by the influence pass's forward.

``sample_chat`` returns, per prompt, ``n`` responses; each response's token ids end with its first stop id (the pad
and stop rule of ``models.special_tokens``: the generation config's eos ids and the tokenizer's) unless it was
truncated at ``max_new_tokens``. ``behaviour_logprobs`` recomputes the log-prob of every sampled token with
``cropi_verl.influence.gradients.response_logprobs`` (the forward the influence pass runs) on the model in the
influence workers' dtype (``in_dtype``), so that at beta's weights the pass's ratio rho = exp(log pi - log beta)
is 1: both rollout backends store these, never a sampler's own values (vLLM's come from its bf16 sampler).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from cropi_verl.models.special_tokens import model_token_rule

if TYPE_CHECKING:
    from cropi_verl.rollout.records import Response


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
def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompts left-padded with ``pad_id`` to the longest ([n, width] ids) and their attention mask."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    return ids, mask


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
    """Sample ``n`` responses for each prompt in one left-padded ``generate`` call seeded by ``seed``; a response
    ends at the first id of the model's stop set (``model_token_rule``)."""
    tokens = model_token_rule(model, tokenizer)
    input_ids, attn = left_pad(prompt_ids, tokens.pad_id)
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
        pad_token_id=tokens.pad_id,
        eos_token_id=list(tokens.stop_ids),
    )
    new = out[:, input_ids.shape[1]:].tolist()
    result: list[list[Generation]] = []
    for i, p in enumerate(prompt_ids):
        gens = []
        for row in new[i * n : (i + 1) * n]:
            end = tokens.first_stop(row)
            gens.append(Generation(list(p), row, True) if end is None else Generation(list(p), row[: end + 1], False))
        result.append(gens)
    return result


def token_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Consecutive indices grouped so that a group's padded size (rows x longest) is at most ``max_tokens``
    (a longer row is a group of its own)."""
    groups: list[list[int]] = []
    longest = 0
    for i, n in enumerate(lengths):
        if groups and (len(groups[-1]) + 1) * max(longest, n) <= max_tokens:
            groups[-1].append(i)
            longest = max(longest, n)
        else:
            groups.append([i])
            longest = n
    return groups


def in_dtype(model: PreTrainedModel, dtype: str) -> PreTrainedModel:
    """``model`` itself when it is in ``dtype`` (a torch dtype name), else a copy cast to it: beta's weights as the
    influence workers hold them (``from_pretrained(dtype=...)`` casts the same way)."""
    want = getattr(torch, dtype)
    return model if model.dtype == want else copy.deepcopy(model).to(want)


@torch.no_grad()
def behaviour_logprobs(
    model: PreTrainedModel, prompt_ids: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int,
    max_tokens: int,
) -> list[np.ndarray]:
    """Per response, the log-probs (float32 arrays) of its tokens under ``model`` in its own dtype
    (``response_logprobs``; give it the workers' dtype, ``in_dtype``), batched by ``token_batches`` over prompt +
    response lengths."""
    from cropi_verl.influence.gradients import response_logprobs

    out = [np.zeros(0, np.float32) for _ in responses]
    rows = [i for i, r in enumerate(responses) if len(r)]
    for batch in token_batches([len(prompt_ids[i]) + len(responses[i]) for i in rows], max_tokens):
        idx = [rows[j] for j in batch]
        lp, _ = response_logprobs(model, [prompt_ids[i] for i in idx], [responses[i] for i in idx], pad_id)
        lp = lp.float().cpu().numpy()
        for b, i in enumerate(idx):
            out[i] = lp[b, : len(responses[i])]
    return out


def with_behaviour_logprobs(
    model: PreTrainedModel, prompt_ids: Sequence[Sequence[int]], groups: Sequence[Sequence[Response]], pad_id: int,
    max_tokens: int,
) -> list[list[Response]]:
    """``groups`` (the responses to each prompt) with their ``logprobs`` set by ``behaviour_logprobs``."""
    flat = [(p, r) for p, group in zip(prompt_ids, groups) for r in group]
    lps = iter(behaviour_logprobs(model, [p for p, _ in flat], [r.token_ids for _, r in flat], pad_id, max_tokens))
    return [[replace(r, logprobs=next(lps)) for r in group] for group in groups]
