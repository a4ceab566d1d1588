"""POPI: the per-prompt policy gradient of the GRPO surrogate on *offline* rollouts, at the current parameters.

For a prompt s with K offline responses y_1..y_K from the behaviour policy beta, rewards r_k and beta's token
log-probs:

    A_k      = (r_k - mean(r)) / (std(r) + eps)                      (std unbiased, as verl's GRPO)
    rho_k,t  = exp(log pi_theta(y_k,t | s, y_k,<t) - log beta(y_k,t | ...))
    L(theta) = -(1/K) sum_k (1/|y_k|) sum_t rho_k,t A_k                (optional PPO clip on rho)
    g_s      = grad_theta L(theta)  over all trainable parameters       (one vector in R^d per prompt)

A prompt whose rewards are all equal has A = 0 and g_s = 0; it is detected before any backward pass and skipped.

Streaming: ``g_s`` is never materialised as a whole. A post-accumulate-grad hook on every trainable parameter
projects that parameter's gradient at its global offset as soon as backward has produced it, adds the [k] result
to the prompt's feature, and frees the gradient (``p.grad = None``). Peak memory stays below one model gradient.
Responses are processed in micro-batches (backward per micro-batch, projected and summed: P is linear).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
from tqdm.auto import tqdm

from cropi_verl.influence.projection import Projector


@dataclass
class PromptRollouts:
    """One prompt's K offline responses. ``behaviour_logprobs[k][t]`` is log beta of ``responses[k][t]``."""

    prompt_id: int
    prompt_ids: list[int]
    responses: list[list[int]]
    behaviour_logprobs: list[list[float]]
    rewards: list[float]


@dataclass(frozen=True)
class PopiConfig:
    adv_eps: float = 1e-4  # the paper's epsilon in A = (r - mean) / (std + eps)
    clip_ratio: float | None = None  # None: no clip (the paper); else PPO clip on rho with this epsilon
    micro_batch: int = 8  # responses per forward/backward


@dataclass
class PopiResult:
    """``features[i]`` is P g_s for ``prompt_ids[i]``; skipped prompts are listed by reason."""

    prompt_ids: list[int]
    features: torch.Tensor  # [N, k] float32
    zero_advantage: list[int] = field(default_factory=list)
    nonfinite: list[int] = field(default_factory=list)


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


def response_logits(
    model: torch.nn.Module, prompt_ids: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits predicting each response token, ``[B, T, V]`` fp32, its target ids ``[B, T]`` and a ``[B, T]`` mask
    (T = longest response), from one right-padded forward pass (``model(input_ids, attention_mask).logits``)."""
    device = next(model.parameters()).device
    seqs = [list(p) + list(r) for p, r in zip(prompt_ids, responses)]
    width = max(len(s) for s in seqs)
    t_max = max(len(r) for r in responses)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    gather_pos = torch.zeros(len(seqs), t_max, dtype=torch.long)
    mask = torch.zeros(len(seqs), t_max)
    for i, (p, r) in enumerate(zip(prompt_ids, responses)):
        ids[i, : len(p) + len(r)] = torch.tensor(seqs[i])
        attn[i, : len(p) + len(r)] = 1
        gather_pos[i, : len(r)] = torch.arange(len(p) - 1, len(p) - 1 + len(r))
        mask[i, : len(r)] = 1
    ids, attn, gather_pos, mask = ids.to(device), attn.to(device), gather_pos.to(device), mask.to(device)
    logits = model(input_ids=ids, attention_mask=attn).logits
    logits = logits.gather(1, gather_pos[..., None].expand(-1, -1, logits.shape[-1])).float()
    targets = ids.gather(1, (gather_pos + 1).clamp(max=width - 1))
    return logits, targets, mask


def response_logprobs(
    model: torch.nn.Module, prompt_ids: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(response_b[t] | prompt_b, response_b[:t]) as ``[B, T]`` (0 at padding) plus the ``[B, T]`` mask."""
    logits, targets, mask = response_logits(model, prompt_ids, responses, pad_id)
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).squeeze(-1)
    return logp * mask, mask


def popi_loss(
    logp: torch.Tensor, behaviour_logp: torch.Tensor, mask: torch.Tensor, adv: torch.Tensor, k_total: int,
    clip_ratio: float | None,
) -> torch.Tensor:
    """-(1/K) sum_b (1/|y_b|) sum_t rho_b,t A_b over the rows of a (micro-)batch; K = ``k_total``."""
    ratio = torch.exp((logp - behaviour_logp) * mask)
    obj = ratio * adv[:, None]
    if clip_ratio is not None:
        obj = torch.minimum(obj, ratio.clamp(1 - clip_ratio, 1 + clip_ratio) * adv[:, None])
    per_seq = (obj * mask).sum(1) / mask.sum(1).clamp(min=1)
    return -per_seq.sum() / k_total


class _StreamingProjection:
    """Hooks that project each parameter's gradient at its offset as soon as it is accumulated, then free it."""

    def __init__(self, model: torch.nn.Module, projector: Projector):
        self.params, dim = parameter_offsets(model)
        if dim != projector.cfg.dim:
            raise ValueError(f"projector dim {projector.cfg.dim} != trainable parameters {dim}")
        self.projector = projector
        self.acc: torch.Tensor | None = None
        self.handles = [p.register_post_accumulate_grad_hook(self._hook(off)) for _, p, off in self.params]

    def _hook(self, offset: int):
        def hook(p: torch.Tensor) -> None:
            part = self.projector.project(p.grad.reshape(-1), offset).double()
            self.acc = part if self.acc is None else self.acc + part
            p.grad = None

        return hook

    def take(self) -> torch.Tensor:
        out = torch.zeros(self.projector.k, dtype=torch.float64) if self.acc is None else self.acc
        self.acc = None
        return out.float().cpu()

    def close(self) -> None:
        for h in self.handles:
            h.remove()


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
    device = next(model.parameters()).device
    stream = _StreamingProjection(model, projector)
    ids, feats, zero, nonfinite = [], [], [], []
    was_training = model.training
    model.eval()  # no dropout: the gradient of the deterministic surrogate
    try:
        for pr in tqdm(prompts, desc="POPI gradients", unit="prompt", disable=not progress, total=total):
            if is_zero_advantage(pr.rewards):
                zero.append(pr.prompt_id)
                continue
            adv = group_advantages(pr.rewards, cfg.adv_eps).to(device)
            k_total = len(pr.responses)
            for s in range(0, k_total, cfg.micro_batch):
                rows = slice(s, s + cfg.micro_batch)
                resp = pr.responses[rows]
                logp, mask = response_logprobs(model, [pr.prompt_ids] * len(resp), resp, pad_id)
                beh = torch.zeros_like(logp)
                for i, lp in enumerate(pr.behaviour_logprobs[rows]):
                    beh[i, : len(lp)] = torch.tensor(lp, dtype=beh.dtype)
                popi_loss(logp, beh, mask, adv[rows], k_total, cfg.clip_ratio).backward()
            f = stream.take()
            if not bool(torch.isfinite(f).all()):
                nonfinite.append(pr.prompt_id)
                continue
            ids.append(pr.prompt_id)
            feats.append(f)
    finally:
        stream.close()
        model.train(was_training)
    features = torch.stack(feats) if feats else torch.zeros(0, projector.k)
    return PopiResult(ids, features, zero, nonfinite)


def validation_gradient(result: PopiResult, max_prompts: int | None = None) -> torch.Tensor:
    """Mean projected POPI gradient over (the first ``max_prompts``) usable validation prompts, ``[k]``.

    P is linear, so the mean of P g_s equals P of the mean gradient.
    """
    feats = result.features if max_prompts is None else result.features[:max_prompts]
    if len(feats) == 0:
        raise ValueError("validation set has no usable prompts (all zero-advantage or non-finite)")
    return feats.double().mean(0).float()
