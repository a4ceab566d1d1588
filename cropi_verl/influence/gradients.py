"""POPI: the per-prompt policy gradient of the GRPO surrogate on *offline* rollouts, at the current parameters.

For a prompt s with K offline responses y_1..y_K from the behaviour policy beta, rewards r_k and beta's token
log-probs:

    A_k      = (r_k - mean(r)) / (std(r) + eps)                      (std unbiased, as verl's GRPO)
    rho_k,t  = exp(log pi_theta(y_k,t | s, y_k,<t) - log beta(y_k,t | ...))
    L(theta) = -(1/K) sum_k (1/|y_k|) sum_t rho_k,t A_k                (optional PPO clip on rho)
    g_s      = grad_theta L(theta)  over all trainable parameters       (one vector in R^d per prompt)

The K responses are the prompt's usable ones (``rollout.records.usable_responses``): a response that is empty (no
token other than EOS) or whose reward is not finite is dropped one by one before this point, and K, mean(r) and
std(r) are over the remaining responses, so one NaN reward among K never makes the prompt's gradient non-finite.
A prompt whose usable rewards are all equal, or that has fewer than two, has A = 0 and g_s = 0 (``is_zero_advantage``);
it is detected before any backward pass and skipped.

Streaming: ``g_s`` is never materialised as a whole. A post-accumulate-grad hook on every trainable parameter
projects that parameter's gradient at its global offset as soon as backward has produced it, adds the [k] result
to the prompt's feature, and frees the gradient (``p.grad = None``). Peak memory stays below one model gradient.
Responses are processed in micro-batches (backward per micro-batch, projected and summed: P is linear): rows
longest first, as many as fit ``micro_batch_tokens`` (``micro_batches``).

Memory: log pi is computed at the positions that predict response tokens only. The decoder's last hidden states h
there go through the output embedding W in chunks of at most ``logit_chunk_tokens`` tokens, log pi_t =
log_softmax(W h_t)[y_t] in fp32 whatever the model's dtype, each chunk under activation checkpointing: one chunk's
[n, V] logits are alive at a time, in backward too. With HF gradient checkpointing on, the model runs in train mode
(HF checkpoints its layers only there): refused when any dropout is active, which would change the surrogate.

Drift (``drift_stats``), from the log-probs the loss already computes (no extra forward): per scored prompt, the
effective sample size of its K responses, ESS = (sum_k w_k)^2 / sum_k w_k^2, divided by K, with w_k the
sequence-level ratio exp(sum_t (log pi_k,t - log beta_k,t)) (how off-policy the responses are) and with w_k the
token-mean ratio (1/|y_k|) sum_t rho_k,t that POPI applies; and the largest token ratio max rho_k,t. At beta all are 1.

Padding-free rows (``pack``, without ``share_prompt``): a micro-batch's rows (prompt + response each) are laid one
after another in a single row of real tokens, with position ids restarting at 0 for each, and attention runs on each
sequence alone (``packed_attention``: one causal SDPA call per sequence, as a varlen kernel does), so every logit
is the padded batch's up to float rounding, and a micro-batch costs sum_b (|s| + |y_b|) positions instead of
n (|s| + max_b |y_b|). Micro-batches are then cut by that real count. ``pack="prompt_once"`` lays the prompt's prefix
s[:-1] once at the start of the row, then each response's s[-1] + y[:-1], every response attending to the whole
prefix and to its own prefix (``PREFIX_SDPA``): |s| - 1 + sum_b |y_b| positions, the same logits, and no KV cache, so
it also runs under gradient checkpointing, where ``share_prompt`` cannot.

Last blocks only (``grad_layers`` = n, ``last_layers_only``, off by default): g_s restricted to the last n decoder
blocks, the final norm and the head, backward stopping at block L - n. Another vector than g_s (not exact): a cost
lever, its selection measured against the full gradient's (``scripts/projection_fidelity.py --grad-layers``).

Two exact savings (``PopiConfig``), both on by default:

- ``merge_duplicates`` (no clip only): identical responses u = {k : y_k = y_u} become one row. With b_u the first
  copy's beta log-probs, rho_k,t = exp(log pi_u,t - b_u,t) exp(b_u,t - beta_k,t), so
  L = -(1/K) sum_u sum_t exp(log pi_u,t - b_u,t) c_u,t  with  c_u,t = (1/|y_u|) sum_{k in u} A_k exp(b_u,t - beta_k,t).
- ``share_prompt``: the prompt's prefix s[:-1] is encoded once per micro-batch into a KV cache that every response
  row attends to (``model(s[:-1], use_cache=True)``, then ``model(s[-1] + y[:-1], past_key_values=...)``), instead of
  once per response. The gradient flows through the cache, so it is the same gradient. HF gradient checkpointing
  drops KV caches, so the two are refused together.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm
from transformers import DynamicCache

from cropi_verl.influence.packed_attention import PACKED_SDPA, PREFIX_SDPA, packed_attention
from cropi_verl.influence.projection import Projector


@dataclass
class PromptRollouts:
    """One prompt's K usable offline responses (finite rewards; module docstring). ``behaviour_logprobs[k][t]`` is
    log beta of ``responses[k][t]``. Token ids and log-probs are sequences: lists, or the integer / float numpy
    arrays a rollouts file holds (shipped to the workers as they are, never as per-token Python objects)."""

    prompt_id: int
    prompt_ids: Sequence[int]
    responses: Sequence[Sequence[int]]
    behaviour_logprobs: Sequence[Sequence[float]]
    rewards: Sequence[float]


@dataclass(frozen=True)
class PopiConfig:
    adv_eps: float = 1e-4  # the paper's epsilon in A = (r - mean) / (std + eps)
    clip_ratio: float | None = None  # None: no clip (the paper); else PPO clip on rho with this epsilon
    micro_batch_tokens: int = 16384  # tokens per forward/backward (>= one row; see ``micro_batches``)
    logit_chunk_tokens: int = 1024  # positions whose [n, V] logits are alive at once
    share_prompt: bool = True  # encode the prompt once per micro-batch (KV cache), not once per response
    merge_duplicates: bool = True  # identical responses -> one weighted row (exact; used only without clip)
    stream_buffer: int = 1 << 20  # fp32 coordinates per staging segment (small tensors projected together)
    pack: bool | str = True  # without share_prompt: a micro-batch's rows packed into one row of real tokens (no
    #                          padding); "prompt_once": and the prompt once in that row (module docstring)
    grad_layers: int | None = None  # None: the full gradient; n: the last n decoder blocks, the final norm and the
    #                                 head only (``last_layers_only``, applied where the model is loaded)

    @property
    def packed(self) -> bool | str:
        """The rows' layout without the prompt cache: ``pack`` (False with ``share_prompt``)."""
        return False if self.share_prompt else self.pack

    @property
    def prompt_once(self) -> bool:
        """The prompt is encoded once per micro-batch: in a KV cache (``share_prompt``) or in the packed row."""
        return self.share_prompt or self.pack == "prompt_once"


DRIFT_COLUMNS = ("ess_seq", "ess_popi", "rho_max")  # ``drift_stats``, per scored prompt


def nan_drift(n: int) -> torch.Tensor:
    """``n`` drift rows not measured: ``[n, len(DRIFT_COLUMNS)]`` NaN."""
    return torch.full((n, len(DRIFT_COLUMNS)), float("nan"), dtype=torch.float64)


@dataclass
class PopiResult:
    """``features[i]`` is P g_s for ``prompt_ids[i]`` and ``drift[i]`` its ``DRIFT_COLUMNS``; skipped prompts are
    listed by reason."""

    prompt_ids: list[int]
    features: torch.Tensor  # [N, k] float32
    zero_advantage: list[int] = field(default_factory=list)
    nonfinite: list[int] = field(default_factory=list)
    drift: torch.Tensor | None = None  # [N, 3] float64: ESS/K sequence-level, ESS/K token-mean, max token ratio
    flops: float = 0.0  # of the forward and backward passes run (``pass_flops``), skipped prompts' included

    def __post_init__(self) -> None:
        if self.drift is None:
            self.drift = nan_drift(len(self.prompt_ids))


def group_advantages(rewards: Sequence[float], eps: float) -> torch.Tensor:
    """A_k = (r_k - mean(r)) / (std(r) + eps), std unbiased; ``[K]`` float32."""
    r = torch.tensor(rewards, dtype=torch.float32)
    if len(r) < 2:
        return torch.zeros_like(r)
    return (r - r.mean()) / (r.std() + eps)


def is_zero_advantage(rewards: Sequence[float]) -> bool:
    """All rewards equal (or fewer than two): the group advantage, hence the gradient, is exactly zero."""
    return len(rewards) < 2 or max(rewards) == min(rewards)


def parameter_offsets(model: torch.nn.Module) -> tuple[list[tuple[str, torch.nn.Parameter, int]], int]:
    """Trainable parameters in ``named_parameters`` order with their global offsets, and d = total numel."""
    out, off = [], 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            out.append((name, p, off))
            off += p.numel()
    return out, off


def _prediction_positions(starts: Sequence[int], lengths: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``pos[b, t] = starts[b] + t`` for t < ``lengths[b]`` (0 after) and its mask, ``[B, T]`` (T = the longest): the
    positions of a layout whose hidden states predict each response token."""
    pos = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    mask = torch.zeros(len(lengths), max(lengths))
    for i, (start, n) in enumerate(zip(starts, lengths)):
        pos[i, :n] = torch.arange(start, start + n)
        mask[i, :n] = 1
    return pos, mask


def _right_padded(
    prompt_ids: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, ...]:
    """prompt_b + response_b right-padded: ``ids`` and attention mask ``[B, W]``; the positions p_b - 1 + t that
    predict response_b[t], their targets and mask ``[B, T]`` (T = longest response)."""
    width = max(len(p) + len(r) for p, r in zip(prompt_ids, responses))
    ids = torch.full((len(responses), width), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, (p, r) in enumerate(zip(prompt_ids, responses)):
        ids[i, : len(p) + len(r)] = torch.tensor([*p, *r])
        attn[i, : len(p) + len(r)] = 1
    pos, mask = _prediction_positions([len(p) - 1 for p in prompt_ids], [len(r) for r in responses])
    targets = ids.gather(1, (pos + 1).clamp(max=width - 1))
    return ids.to(device), attn.to(device), pos.to(device), targets.to(device), mask.to(device)


def _packed(
    prompt_ids: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], device: torch.device
) -> tuple[torch.Tensor, ...]:
    """prompt_b + response_b of every row one after another in one row ``ids`` ``[1, N]`` (N = sum of their lengths)
    with position ids restarting at 0 for each; the positions o_b + p_b - 1 + t in it that predict response_b[t]
    (o_b: the row's offset), their targets and mask ``[B, T]``."""
    seqs = [np.concatenate([np.asarray(p, dtype=np.int64), np.asarray(r, dtype=np.int64)])
            for p, r in zip(prompt_ids, responses)]
    offsets = np.concatenate([[0], np.cumsum([len(q) for q in seqs])[:-1]])
    starts = [o + len(p) - 1 for o, p in zip(offsets, prompt_ids)]
    pos, mask = _prediction_positions(starts, [len(r) for r in responses])
    ids = torch.from_numpy(np.concatenate(seqs))
    positions = torch.from_numpy(np.concatenate([np.arange(len(q)) for q in seqs]))
    targets = ids[(pos + 1).clamp(max=len(ids) - 1)]
    return ids[None].to(device), positions[None].to(device), pos.to(device), targets.to(device), mask.to(device)


def _prompt_once(
    prompt_ids: Sequence[int], responses: Sequence[Sequence[int]], device: torch.device
) -> tuple[torch.Tensor, ...]:
    """One row ``ids`` ``[1, N]``: the prompt's prefix s[:-1] (positions 0 .. |s| - 2), then for each response
    s[-1] + y_b[:-1] (positions |s| - 1 ...), whose t-th token predicts y_b[t]; the positions ``[B, T]`` in the row
    that predict each response token, their targets and mask ``[B, T]``."""
    n = len(prompt_ids) - 1
    segments = [np.concatenate([np.asarray(prompt_ids[-1:], dtype=np.int64), np.asarray(r[:-1], dtype=np.int64)])
                for r in responses]
    offsets = n + np.concatenate([[0], np.cumsum([len(q) for q in segments])[:-1]])
    pos, mask = _prediction_positions(offsets, [len(r) for r in responses])
    targets = torch.zeros_like(pos)  # the segment's last token is not in the row: y_b[t] itself, not the next input
    for i, r in enumerate(responses):
        targets[i, : len(r)] = torch.from_numpy(np.asarray(r, dtype=np.int64))
    ids = torch.from_numpy(np.concatenate([np.asarray(prompt_ids[:-1], dtype=np.int64), *segments]))
    positions = torch.from_numpy(np.concatenate([np.arange(n), *[np.arange(n, n + len(q)) for q in segments]]))
    return ids[None].to(device), positions[None].to(device), pos.to(device), targets.to(device), mask.to(device)


def _attention_of(packed: bool | str) -> str:
    """The attention a packed layout needs: ``PREFIX_SDPA`` with the prompt once, else ``PACKED_SDPA``."""
    return PREFIX_SDPA if packed == "prompt_once" else PACKED_SDPA


def _response_states(
    model: torch.nn.Module, prompt_ids: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int,
    packed: bool | str = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The decoder's last hidden states at the positions predicting each response token ``[B, T, H]`` (one forward,
    no KV cache: of the rows right-padded, packed into one row, or packed with the prompt once: ``"prompt_once"``,
    every row's prompt the same), the targets and the mask ``[B, T]``."""
    device = next(model.parameters()).device
    if packed:
        once = packed == "prompt_once"
        if once and any(not np.array_equal(p, prompt_ids[0]) for p in prompt_ids[1:]):
            raise ValueError("pack=prompt_once lays out one prompt's responses: the rows have different prompts")
        ids, positions, pos, targets, mask = (_prompt_once(prompt_ids[0], responses, device) if once
                                              else _packed(prompt_ids, responses, device))
        prefix = {"cropi_prefix_len": len(prompt_ids[0]) - 1} if once else {}
        with packed_attention(model, _attention_of(packed)):
            hidden = model.get_decoder()(input_ids=ids, position_ids=positions, use_cache=False,
                                         **prefix).last_hidden_state[0]
        return hidden[pos], targets, mask
    ids, attn, pos, targets, mask = _right_padded(prompt_ids, responses, pad_id, device)
    hidden = model.get_decoder()(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state
    return hidden.gather(1, pos[..., None].expand(-1, -1, hidden.shape[-1])), targets, mask


def response_logits(
    model: torch.nn.Module, prompt_ids: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits W h predicting each response token ``[B, T, V]`` fp32 (W: the output embedding, applied at those
    positions only), its target ids ``[B, T]`` and a ``[B, T]`` mask."""
    hidden, targets, mask = _response_states(model, prompt_ids, responses, pad_id)
    return model.get_output_embeddings()(hidden).float(), targets, mask


def _chunk_logprobs(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log_softmax(W h_i)[y_i] in fp32, ``[n, H]`` -> ``[n]``."""
    return torch.log_softmax(head(hidden).float(), dim=-1).gather(-1, targets[:, None]).squeeze(-1)


def _token_logprobs(
    model: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, chunk_tokens: int
) -> torch.Tensor:
    """log pi_t = log_softmax(W h_t)[y_t] where ``mask`` is 1 (0 elsewhere), ``[B, T, H]`` -> ``[B, T]`` fp32: the
    masked states in chunks of ``chunk_tokens``, each checkpointed (its [n, V] logits are recomputed in backward)."""
    sel = mask.bool()
    head = model.get_output_embeddings()
    parts = [checkpoint(_chunk_logprobs, head, h, y, use_reentrant=False)
             for h, y in zip(hidden[sel].split(chunk_tokens), targets[sel].split(chunk_tokens))]
    return torch.zeros_like(mask).masked_scatter(sel, torch.cat(parts))


def response_logprobs(
    model: torch.nn.Module, prompt_ids: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int,
    chunk_tokens: int = PopiConfig.logit_chunk_tokens, packed: bool | str = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(response_b[t] | prompt_b, response_b[:t]) as ``[B, T]`` (0 at padding) plus the ``[B, T]`` mask; the
    rows packed into one (``_packed``; ``"prompt_once"``: ``_prompt_once``) or right-padded."""
    hidden, targets, mask = _response_states(model, prompt_ids, responses, pad_id, packed)
    return _token_logprobs(model, hidden, targets, mask, chunk_tokens), mask


def prompt_cached_logprobs(
    model: torch.nn.Module, prompt_ids: Sequence[int], responses: Sequence[Sequence[int]], pad_id: int,
    chunk_tokens: int = PopiConfig.logit_chunk_tokens,
) -> tuple[torch.Tensor, torch.Tensor]:
    """As ``response_logprobs`` for B responses to one prompt, with the prompt encoded once: the prefix
    ``prompt[:-1]`` fills a KV cache (expanded to B rows), then ``[prompt[-1]] + response[:-1]`` (right-padded to
    T) is run on top of it, so position t predicts ``response[t]``. Returns ``[B, T]`` log-probs and mask."""
    device = next(model.parameters()).device
    decoder = model.get_decoder()
    b, t_max = len(responses), max(len(r) for r in responses)
    ids = torch.full((b, t_max), pad_id, dtype=torch.long)
    targets = torch.zeros(b, t_max, dtype=torch.long)
    mask = torch.zeros(b, t_max)
    for i, r in enumerate(responses):
        ids[i, : len(r)] = torch.tensor([prompt_ids[-1], *r[:-1]])
        targets[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    ids, targets, mask = ids.to(device), targets.to(device), mask.to(device)
    cache, n_prefix = None, len(prompt_ids) - 1
    if n_prefix:
        prefix = torch.tensor([list(prompt_ids[:-1])], device=device)
        layers = decoder(input_ids=prefix, use_cache=True).past_key_values.layers
        cache = DynamicCache(ddp_cache_data=[(lay.keys.expand(b, -1, -1, -1), lay.values.expand(b, -1, -1, -1))
                                             for lay in layers], config=model.config)
    attn = torch.cat([torch.ones(b, n_prefix, device=device), mask], 1).long()
    hidden = decoder(input_ids=ids, attention_mask=attn, past_key_values=cache).last_hidden_state
    return _token_logprobs(model, hidden, targets, mask, chunk_tokens), mask


def token_key(tokens: Sequence[int]) -> bytes:
    """A hashable key of a token sequence, equal for equal sequences (a list or an integer array)."""
    return np.asarray(tokens, dtype=np.int64).tobytes()


@dataclass
class ResponseRow:
    """One row of the POPI loss: response tokens, reference log-probs ``ref[t]`` and coefficients ``coef[t]``;
    the row contributes -(1/K) sum_t f(exp(log pi_t - ref_t), coef_t), f(rho, c) = rho c (or the clipped min).
    ``copies``: the responses k it stands for (one, or every identical response when merged)."""

    tokens: list[int]
    ref: list[float]
    coef: list[float]
    copies: list[int] = field(default_factory=list)


def response_rows(pr: PromptRollouts, adv: Sequence[float], merge: bool) -> list[ResponseRow]:
    """One row per response (ref = beta, coef = A_k / |y_k|), or with ``merge`` one per distinct response
    (ref = beta of its first copy, coef_t = (1/|y|) sum_copies A_k exp(ref_t - beta_k,t)). Empty responses add
    nothing and get no row."""
    rows: dict[tuple, ResponseRow] = {}
    out: list[ResponseRow] = []
    for k, (resp, beh) in enumerate(zip(pr.responses, pr.behaviour_logprobs)):
        if not len(resp):
            continue
        key = token_key(resp)
        if merge and key in rows:
            row = rows[key]
            row.coef = [c + float(adv[k]) * math.exp(r - b) / len(resp) for c, r, b in zip(row.coef, row.ref, beh)]
            row.copies.append(k)
            continue
        row = ResponseRow(list(resp), list(beh), [float(adv[k]) / len(resp)] * len(resp), [k])
        rows[key] = row
        out.append(row)
    return out


def popi_loss(
    logp: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor, coef: torch.Tensor, k_total: int,
    clip_ratio: float | None,
) -> torch.Tensor:
    """-(1/K) sum_rows sum_t rho_t c_t, rho = exp(log pi - ref), over ``[B, T]`` rows (``ResponseRow``); with a clip,
    min(rho c, clip(rho, 1 -/+ eps) c) (c has the sign of A), K = ``k_total``."""
    ratio = torch.exp((logp - ref) * mask)
    obj = ratio * coef
    if clip_ratio is not None:
        obj = torch.minimum(obj, ratio.clamp(1 - clip_ratio, 1 + clip_ratio) * coef)
    return -(obj * mask).sum() / k_total


def _padded(rows: Sequence[list[float]], like: torch.Tensor) -> torch.Tensor:
    """``rows`` right-padded with zeros to ``like``'s shape, dtype and device (built on the CPU, one copy)."""
    out = torch.zeros(like.shape, dtype=like.dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=out.dtype)
    return out.to(like.device)


class _StreamingProjection:
    """Hooks that project each parameter's gradient at its offset as soon as it is accumulated, then free it.

    Parameters are grouped into segments of consecutive offsets of at most ``buffer_numel`` coordinates (a larger
    parameter is a segment of its own and is projected straight away). A segment's gradients are added into a
    zeroed fp32 buffer and the buffer is projected once all its parameters have reported (or at ``take``), so a
    model of many small tensors costs few projection calls. Any arrival order is exact: every contribution lands
    in a buffer that is projected once, and P is linear. Peak extra memory: the segments open at once. On a CUDA
    device the projections run on a side stream, so they overlap the rest of the backward pass (a gradient's memory
    is reused only once its projection has read it: ``record_stream``)."""

    def __init__(self, model: torch.nn.Module, projector: Projector, buffer_numel: int):
        self.params, dim = parameter_offsets(model)
        if dim != projector.cfg.dim:
            raise ValueError(f"projector dim {projector.cfg.dim} != trainable parameters {dim}")
        self.projector = projector
        self.acc: torch.Tensor | None = None
        self.segments: list[list[int]] = []  # [start, numel, n_params]
        seg_of = []
        for _, p, off in self.params:
            last = self.segments[-1] if self.segments else None
            if p.numel() <= buffer_numel and last and last[1] + p.numel() <= buffer_numel:
                last[1] += p.numel()
                last[2] += 1
            else:
                self.segments.append([off, p.numel(), 1])
            seg_of.append(len(self.segments) - 1)
        self.open: dict[int, tuple[torch.Tensor, int]] = {}  # segment -> (buffer, parameters still to report)
        self.handles = [p.register_post_accumulate_grad_hook(self._hook(off, seg))
                        for (_, p, off), seg in zip(self.params, seg_of)]
        device = self.params[0][1].device if self.params else torch.device("cpu")
        self.side = torch.cuda.Stream(device) if device.type == "cuda" else None

    def _add(self, x: torch.Tensor, offset: int) -> None:
        if self.side is None:
            return self._accumulate(x, offset)
        self.side.wait_stream(torch.cuda.current_stream(x.device))
        x.record_stream(self.side)
        with torch.cuda.stream(self.side):
            self._accumulate(x, offset)

    def _accumulate(self, x: torch.Tensor, offset: int) -> None:
        part = self.projector.project(x, offset).double()
        self.acc = part if self.acc is None else self.acc + part

    def _hook(self, offset: int, seg: int):
        start, numel, n_params = self.segments[seg]

        def hook(p: torch.Tensor) -> None:
            g = p.grad.reshape(-1)
            if n_params == 1:
                self._add(g, offset)
            else:
                buf, left = self.open.get(seg) or (torch.zeros(numel, dtype=torch.float32, device=g.device), n_params)
                buf[offset - start : offset - start + g.numel()] += g
                self.open[seg] = (buf, left - 1)
                if left == 1:
                    self._add(self.open.pop(seg)[0], start)
            p.grad = None

        return hook

    def take(self) -> torch.Tensor:
        for seg, (buf, _) in sorted(self.open.items()):
            self._add(buf, self.segments[seg][0])
        self.open.clear()
        if self.side is not None:
            torch.cuda.current_stream(self.side.device).wait_stream(self.side)
        out = torch.zeros(self.projector.k, dtype=torch.float64) if self.acc is None else self.acc
        self.acc = None
        return out.float().cpu()

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def response_log_ratios(logp: torch.Tensor, chunk: Sequence[ResponseRow],
                        behaviour: Sequence[Sequence[float]]) -> list[tuple[int, torch.Tensor]]:
    """(k, log pi_k,t - log beta_k,t over its |y_k| tokens, fp64) for every response k that the rows of ``chunk``
    stand for, ``logp`` their ``[B, T]`` log pi (detached here)."""
    out = []
    for i, row in enumerate(chunk):
        lp = logp[i, : len(row.tokens)].detach().double().cpu()
        out += [(k, lp - torch.from_numpy(np.array(behaviour[k], dtype=np.float64))) for k in row.copies]
    return out


def drift_stats(log_ratios: Sequence[torch.Tensor]) -> tuple[float, float, float]:
    """(ESS/K of the sequence-level ratios exp(sum_t d_k,t), ESS/K of the token-mean ratios (1/|y_k|) sum_t
    exp(d_k,t), max_k,t exp(d_k,t)) of K responses' per-token log ratios d_k; ESS = (sum w)^2 / sum w^2, the
    sequence ratios scaled by their largest (ESS is scale-free) so that none overflows."""
    seq = torch.stack([d.sum() for d in log_ratios])
    w_seq = torch.exp(seq - seq.max())
    w_tok = torch.stack([torch.exp(d).mean() for d in log_ratios])
    k = len(log_ratios)
    ess = lambda w: float(w.sum() ** 2 / (w * w).sum()) / k  # noqa: E731
    return ess(w_seq), ess(w_tok), float(max(torch.exp(d).max() for d in log_ratios))


def pass_flops(model: torch.nn.Module, tokens: int) -> float:
    """FLOPs of a forward and backward pass over ``tokens`` processed positions: 2 P T + (4 + 2 c) d T, with P all
    the parameters, d the trainable ones (P unless ``last_layers_only``: backward runs through those only) and c = 1
    under HF gradient checkpointing (a layer's forward runs again in its backward): 6 P T, or 8 P T, in full."""
    checkpointing = getattr(model, "is_gradient_checkpointing", False)
    every = sum(p.numel() for p in model.parameters())
    return (2 * every + (4 + 2 * checkpointing) * parameter_offsets(model)[1]) * tokens


def _detach_hidden(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    if args:
        return (args[0].detach(),) + tuple(args[1:]), kwargs
    return args, kwargs | {"hidden_states": kwargs["hidden_states"].detach()}


def grad_layers_problem(n: int | None, layers: int) -> str | None:
    """Why ``grad_layers`` = n cannot restrict a model of ``layers`` decoder blocks (None: it can)."""
    if n is None or 1 <= n <= layers:
        return None
    return f"grad_layers={n}: expected null or 1 .. {layers} (the model's decoder blocks)"


def last_layers_only(model: torch.nn.Module, n: int | None) -> None:
    """Restrict g_s to the last ``n`` of the L decoder blocks, the final norm and the output head (a tied head is
    the input embedding: its gradient then comes from the head alone): every other parameter stops requiring grad
    and the hidden state entering block L - n is detached, so backward stops there. Its FLOPs per position, about
    (2 + 4 n / L) / 6 of the full pass's. None: the full gradient (nothing changes). Refuses n outside 1 .. L."""
    decoder = model.get_decoder()
    layers = decoder.layers
    if problem := grad_layers_problem(n, len(layers)):
        raise ValueError(problem)
    if n is None:
        return
    keep = {id(p) for m in (*layers[len(layers) - n:], decoder.norm, model.get_output_embeddings())
            for p in m.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    layers[len(layers) - n].register_forward_pre_hook(_detach_hidden, with_kwargs=True)


def processed_tokens(prompt_len: int, lengths: Sequence[int], share_prompt: bool, packed: bool | str = False) -> int:
    """Positions a micro-batch of responses of ``lengths`` runs through: n rows of prompt + longest response, the
    prompt's prefix once and n rows of its last token + the longest response (``share_prompt``), their real tokens
    sum_b (|s| + |y_b|) (``packed``), or the prefix once and sum_b |y_b| (``packed="prompt_once"``)."""
    if share_prompt:
        return prompt_len - 1 + len(lengths) * max(lengths)
    if packed == "prompt_once":
        return prompt_len - 1 + sum(lengths)
    return sum(prompt_len + n for n in lengths) if packed else len(lengths) * (prompt_len + max(lengths))


def micro_batches(lengths: Sequence[int], prompt_len: int, budget: int, share_prompt: bool,
                  packed: bool | str = False) -> list[list[int]]:
    """Row indices, longest first, cut greedily into micro-batches of at most ``budget`` processed tokens
    (``processed_tokens``; one row at least)."""
    out: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if out:
            cost = processed_tokens(prompt_len, [lengths[j] for j in out[-1]] + [lengths[i]], share_prompt, packed)
            if cost <= budget:
                out[-1].append(i)
                continue
        out.append([i])
    return out


def checkpointing_conflict(share_prompt: bool, gradient_checkpointing: bool) -> str | None:
    """Why ``share_prompt`` cannot run under gradient checkpointing (HF drops KV caches in checkpointed layers, so
    the prompt's cache would be silently ignored), or None."""
    if share_prompt and gradient_checkpointing:
        return ("share_prompt needs the prompt's KV cache, which HF gradient checkpointing drops: set share_prompt "
                "to false (pack=prompt_once encodes the prompt once without a cache) or turn gradient checkpointing "
                "off")
    return None


def active_dropout(model: torch.nn.Module) -> list[str]:
    """What train mode would make random: dropout modules with p > 0 and config rates (``*dropout*``, ``*pdrop*``)
    above 0."""
    mods = [f"{n}.p={m.p}" for n, m in model.named_modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)
            and m.p > 0]
    config = model.config.to_dict() if hasattr(model, "config") else {}
    rates = [f"config.{k}={v}" for k, v in config.items() if ("dropout" in k or "pdrop" in k)
             and isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0]
    return mods + rates


def _train_mode(model: torch.nn.Module, share_prompt: bool) -> bool:
    """The mode of the pass: train iff HF gradient checkpointing is on (HF checkpoints its layers only in train mode),
    refused when train mode would add dropout (another, random surrogate) or the KV cache ``share_prompt`` needs
    would be dropped; eval otherwise."""
    if not getattr(model, "is_gradient_checkpointing", False):
        return False
    conflict = checkpointing_conflict(share_prompt, True)
    if conflict:
        raise ValueError(conflict)
    dropout = active_dropout(model)
    if dropout:
        raise ValueError(f"gradient checkpointing runs the model in train mode, where dropout is active ({dropout}): "
                         "set those rates to 0 or turn gradient checkpointing off")
    return True


def popi_features(
    model: torch.nn.Module,
    prompts: Iterable[PromptRollouts],
    projector: Projector,
    pad_id: int,
    cfg: PopiConfig = PopiConfig(),
    progress: bool = False,
    total: int | None = None,
) -> PopiResult:
    """P g_s for every prompt with a non-zero advantage (see the module docstring)."""
    train = _train_mode(model, cfg.share_prompt)
    stream = _StreamingProjection(model, projector, cfg.stream_buffer)
    ids, feats, zero, nonfinite, drift, tokens = [], [], [], [], [], 0
    was_training = model.training
    model.train(train)  # without dropout either way: the deterministic surrogate's gradient
    packed = cfg.packed
    try:
        with packed_attention(model, _attention_of(packed)) if packed else nullcontext():  # recomputed in backward
            for pr in tqdm(prompts, desc="POPI gradients", unit="prompt", disable=not progress, total=total):
                if is_zero_advantage(pr.rewards):
                    zero.append(pr.prompt_id)
                    continue
                adv = group_advantages(pr.rewards, cfg.adv_eps).tolist()
                rows = response_rows(pr, adv, cfg.merge_duplicates and cfg.clip_ratio is None)
                lengths = [len(r.tokens) for r in rows]
                ratios = []
                for batch in micro_batches(lengths, len(pr.prompt_ids), cfg.micro_batch_tokens, cfg.share_prompt,
                                           packed):
                    chunk = [rows[i] for i in batch]
                    resp = [r.tokens for r in chunk]
                    tokens += processed_tokens(len(pr.prompt_ids), [len(r) for r in resp], cfg.share_prompt, packed)
                    if cfg.share_prompt:
                        logp, mask = prompt_cached_logprobs(model, pr.prompt_ids, resp, pad_id, cfg.logit_chunk_tokens)
                    else:
                        logp, mask = response_logprobs(model, [pr.prompt_ids] * len(resp), resp, pad_id,
                                                       cfg.logit_chunk_tokens, packed)
                    ref, coef = _padded([r.ref for r in chunk], logp), _padded([r.coef for r in chunk], logp)
                    popi_loss(logp, ref, mask, coef, len(pr.responses), cfg.clip_ratio).backward()
                    ratios += response_log_ratios(logp, chunk, pr.behaviour_logprobs)
                f = stream.take()
                if not bool(torch.isfinite(f).all()):
                    nonfinite.append(pr.prompt_id)
                    continue
                ids.append(pr.prompt_id)
                feats.append(f)
                drift.append(drift_stats([d for _, d in sorted(ratios, key=lambda kd: kd[0])]))
    finally:
        stream.close()
        model.train(was_training)
    features = torch.stack(feats) if feats else torch.zeros(0, projector.k)
    return PopiResult(ids, features, zero, nonfinite, torch.tensor(drift, dtype=torch.float64).reshape(-1, 3),
                      pass_flops(model, tokens))


def validation_gradient(result: PopiResult, max_prompts: int | None = None) -> torch.Tensor:
    """Mean projected POPI gradient over (the first ``max_prompts``) usable validation prompts, ``[k]``.

    P is linear, so the mean of P g_s equals P of the mean gradient.
    """
    feats = result.features if max_prompts is None else result.features[:max_prompts]
    if len(feats) == 0:
        raise ValueError("validation set has no usable prompts (all zero-advantage or non-finite)")
    return feats.double().mean(0).float()
