"""Attention over packed rows, one causal SDPA call per row: exact, and no ``[N, N]`` mask over the whole packed row.

A packed row holds several sequences one after another, each with position ids restarting at 0 (``gradients._packed``).
transformers' own handling of that layout (``masking_utils.find_packed_sequence_indices``) builds a dense block-causal
mask, so sdpa and eager attention still compute all N^2 scores of the packed row: with 8 responses per row, several
times the scores the rows need, which eats the padding it saves wherever attention is a large share of the work.
``PACKED_SDPA`` instead splits the query, key and value at every position id 0 and runs causal
``scaled_dot_product_attention`` on each sequence alone (flash or memory-efficient kernels on a GPU, no mask), as
flash-attention's varlen kernel does. It is registered under that name with transformers' ``AttentionInterface``
(and a mask function that builds nothing); ``packed_attention(model)`` switches a model to it for a block.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

PACKED_SDPA = "cropi_packed_sdpa"


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


def _no_mask(*args, **kwargs) -> None:
    """The mask of ``PACKED_SDPA``: none (each sequence is attended to on its own, causally)."""
    return None


AttentionInterface.register(PACKED_SDPA, packed_sdpa_forward)
ALL_MASK_ATTENTION_FUNCTIONS.register(PACKED_SDPA, _no_mask)


@contextmanager
def packed_attention(model: torch.nn.Module) -> Iterator[None]:
    """``model`` (a transformers model) attends with ``PACKED_SDPA`` within the block."""
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = PACKED_SDPA
    try:
        yield
    finally:
        config._attn_implementation = before
