"""Attention over packed rows, one causal SDPA call per row: exact, and no ``[N, N]`` mask over the whole packed row.

A packed row holds several sequences one after another, each with position ids restarting at 0 (``gradients._packed``).
transformers' own handling of that layout (``masking_utils.find_packed_sequence_indices``) builds a dense block-causal
mask, so sdpa and eager attention still compute all N^2 scores of the packed row: with 8 responses per row, several
times the scores the rows need, which eats the padding it saves wherever attention is a large share of the work.
``PACKED_SDPA`` instead splits the query, key and value at every position id 0 and runs causal
``scaled_dot_product_attention`` on each sequence alone (flash or memory-efficient kernels on a GPU, no mask), as
flash-attention's varlen kernel does. It is registered under that name with transformers' ``AttentionInterface``
(and a mask function that builds nothing); ``packed_attention(model)`` switches a model to it for a block.

``PREFIX_SDPA`` is the layout with the prompt once (``gradients._prompt_once``): a shared prefix of ``cropi_prefix_len``
tokens (a keyword the model's forward passes down to its attention), then segments, each starting where the position
ids stop increasing. The prefix attends to itself causally; a segment of L tokens attends to the whole prefix and
causally to itself, i.e. lower-right causal attention over the n + L keys [prefix, segment]
(``torch.nn.attention.bias.causal_lower_right``: flash or memory-efficient kernels on a GPU, a materialised mask on
the CPU), exactly the attention each response would get after its own copy of the prompt.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch.nn.attention.bias import causal_lower_right
from torch.nn.functional import scaled_dot_product_attention
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

PACKED_SDPA = "cropi_packed_sdpa"
PREFIX_SDPA = "cropi_prefix_sdpa"


def packed_sdpa_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None = None,
                        **kwargs) -> tuple[torch.Tensor, None]:
    """Causal SDPA on each sequence of a packed row (``[1, heads, N, d]``; a sequence starts where ``position_ids``
    is 0), outputs concatenated back: ``[1, N, heads, d]`` as transformers' sdpa returns."""
    if position_ids is None or query.shape[0] != 1:
        raise ValueError(f"{PACKED_SDPA} attention needs one packed row and its position ids")
    starts = torch.nonzero(position_ids[0] == 0).flatten().tolist() + [query.shape[2]]
    parts = [sdpa_attention_forward(module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None, is_causal=True,
                                    **kwargs)[0] for a, b in zip(starts[:-1], starts[1:])]
    return torch.cat(parts, dim=1), None


def prefix_sdpa_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None = None,
                        cropi_prefix_len: int | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """A shared prefix of ``cropi_prefix_len`` positions, then segments that each attend to it (module docstring);
    ``[1, heads, N, d]`` in, ``[1, N, heads, d]`` out."""
    if position_ids is None or query.shape[0] != 1 or cropi_prefix_len is None:
        raise ValueError(f"{PREFIX_SDPA} attention needs one packed row, its position ids and cropi_prefix_len")
    if kwargs.get("sliding_window") is not None:
        raise ValueError(f"{PREFIX_SDPA} attention has no sliding window (the model's config sets one)")
    n, groups, scale = cropi_prefix_len, query.shape[1] // key.shape[1], kwargs.get("scaling", module.scaling)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    pos = position_ids[0]
    starts = [n] + (torch.nonzero(pos[n + 1:] <= pos[n:-1]).flatten() + n + 1).tolist() + [query.shape[2]]
    parts = [scaled_dot_product_attention(query[:, :, :n], key[:, :, :n], value[:, :, :n], is_causal=True,
                                          scale=scale)] if n else []
    for a, b in zip(starts[:-1], starts[1:]):
        k, v = torch.cat([key[:, :, :n], key[:, :, a:b]], 2), torch.cat([value[:, :, :n], value[:, :, a:b]], 2)
        causal = causal_lower_right(b - a, n + b - a)  # [prefix, segment]: the whole prefix, then causally
        parts.append(scaled_dot_product_attention(query[:, :, a:b], k, v, attn_mask=causal, scale=scale))
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


def _no_mask(*args, **kwargs) -> None:
    """The mask of ``PACKED_SDPA`` and ``PREFIX_SDPA``: none (their attention functions lay it out themselves)."""
    return None


for _name, _forward in ((PACKED_SDPA, packed_sdpa_forward), (PREFIX_SDPA, prefix_sdpa_forward)):
    AttentionInterface.register(_name, _forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(_name, _no_mask)


@contextmanager
def packed_attention(model: torch.nn.Module, implementation: str = PACKED_SDPA) -> Iterator[None]:
    """``model`` (a transformers model) attends with ``implementation`` (``PACKED_SDPA`` or ``PREFIX_SDPA``) within
    the block."""
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = implementation
    try:
        yield
    finally:
        config._attn_implementation = before
