"""One GRPO step on an HF policy, on CPU: sample, reward, verl's GRPO advantage, verl's policy loss, update.

For a batch of B prompts with n responses each:

- rewards r_{b,j} from ``cropi_verl.rewards.compute_score``, placed on the last response token;
- ``core_algos.compute_grpo_outcome_advantage``: A_{b,j} = (r_{b,j} - mean_j r_b) / (std_j r_b + eps);
- one update per batch (verl with ``ppo_epochs=1`` and mini-batch = batch), so old log-probs are the detached
  current ones and the ratio is 1 in value; its forward and backward run in micro-batches of at most
  ``micro_batch_tokens`` padded positions with the gradients accumulated, each micro-batch's loss aggregated over the
  whole batch, so the update is the full-batch one (up to rounding) and the memory is bounded by the budget;
- loss = ``policy_loss_fn(vanilla)`` (PPO clip, ``loss_agg_mode``) - entropy_coeff * entropy
  + kl_loss_coef * ``kl_penalty(logp, ref_logp, kl_loss_type)`` aggregated the same way, as verl's actor does;
- gradient clipping at ``grad_clip``, then one optimizer step.

``compute/flops``, the step's work (``step_flops``): sampling 2 P per prompt and response token, the update's forward
and backward 6 P per position of the padded micro-batches, the reference policy's forward 2 P per position (KL loss).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
import torch
from verl.trainer.ppo import core_algos
from verl.utils.torch_functional import entropy_from_logits, logprobs_from_logits
from verl.workers.config import ActorConfig

from cropi_verl.influence.gradients import response_logits
from cropi_verl.models.special_tokens import model_token_rule
from cropi_verl.rewards import compute_score
from cropi_verl.rollout.hf_backend import chat_prompt_ids, sample_chat, token_batches


@dataclass(frozen=True)
class GRPOConfig:
    batch_size: int = 16  # prompts per step
    n: int = 8  # responses per prompt
    temperature: float = 1.0
    max_new_tokens: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    clip_ratio: float = 0.2
    loss_agg_mode: str = "token-mean"
    norm_adv_by_std_in_grpo: bool = True
    use_kl_loss: bool = False
    kl_loss_coef: float = 0.001
    kl_loss_type: str = "low_var_kl"
    entropy_coeff: float = 0.0
    micro_batch_tokens: int = 16384  # padded positions per forward/backward of the update (module docstring)

    def __post_init__(self) -> None:
        """verl refuses a bad ``loss_agg_mode`` (its ``ActorConfig``) or ``kl_loss_type`` (its ``kl_penalty``) here,
        not at the first step."""
        self.actor_config()
        try:
            core_algos.kl_penalty(torch.zeros(1), torch.zeros(1), self.kl_loss_type)
        except NotImplementedError:
            raise ValueError(f"kl_loss_type={self.kl_loss_type!r}: verl's kl_penalty has no such estimator") from None

    def actor_config(self) -> ActorConfig:
        """verl's actor config carrying the loss settings ``policy_loss_fn`` reads."""
        return ActorConfig(strategy="fsdp", ppo_mini_batch_size=self.batch_size, ppo_micro_batch_size_per_gpu=self.batch_size,
                           rollout_n=self.n, clip_ratio=self.clip_ratio, clip_ratio_low=self.clip_ratio,
                           clip_ratio_high=self.clip_ratio, loss_agg_mode=self.loss_agg_mode)


def step_flops(model: torch.nn.Module, sequence_tokens: list[int], padded_positions: int, kl: bool) -> float:
    """2 P sum(prompt + response tokens) (sampling) + (6 + 2 kl) P x the update's padded positions."""
    params = sum(p.numel() for p in model.parameters())
    return 2.0 * params * sum(sequence_tokens) + (6 + 2 * kl) * params * padded_positions


def group_advantages(rewards: torch.Tensor, lengths: torch.Tensor, n: int, norm_by_std: bool) -> torch.Tensor:
    """verl's GRPO advantage of each response, ``[N, max length]`` (0 past each response's end): its reward on its
    last token, groups of ``n`` consecutive responses."""
    mask = (torch.arange(int(lengths.max()))[None] < lengths[:, None]).float()
    token_rewards = torch.zeros_like(mask)
    token_rewards[torch.arange(len(lengths)), lengths - 1] = rewards
    adv, _ = core_algos.compute_grpo_outcome_advantage(token_rewards, mask, np.arange(len(lengths)) // n,
                                                       norm_adv_by_std_in_grpo=norm_by_std)
    return adv


def grpo_step(
    model: torch.nn.Module,
    tokenizer,
    optimizer: torch.optim.Optimizer,
    batch: pd.DataFrame,
    cfg: GRPOConfig,
    seed: int,
    ref_model: torch.nn.Module | None = None,
) -> dict[str, float]:
    """Sample ``cfg.n`` responses per row of ``batch`` (seed ``seed``), update ``model`` once; returns metrics.

    The update's forward and backward run in micro-batches of at most ``cfg.micro_batch_tokens`` padded positions
    (``token_batches``), their gradients accumulated: each micro-batch's loss is aggregated over the whole batch
    (verl's ``global_batch_info``: the batch's token count, sequence count and width), so their sum is the
    full-batch loss, whatever the budget."""
    if cfg.use_kl_loss and ref_model is None:
        raise ValueError("use_kl_loss needs a reference model")
    prompts = [chat_prompt_ids(tokenizer, list(p)) for p in batch["prompt"]]
    pad_id = model_token_rule(model, tokenizer).pad_id
    model.eval()
    gens = sample_chat(model, tokenizer, prompts, cfg.n, cfg.temperature, 1.0, cfg.max_new_tokens, seed)
    flat = [g for group in gens for g in group]
    rewards = torch.tensor([
        compute_score(row["data_source"], tokenizer.decode(g.response_ids, skip_special_tokens=True),
                      row["reward_model"]["ground_truth"], row["extra_info"])
        for (_, row), group in zip(batch.iterrows(), gens) for g in group
    ], dtype=torch.float32)
    lengths = torch.tensor([len(g.response_ids) for g in flat])
    adv = group_advantages(rewards, lengths, cfg.n, cfg.norm_adv_by_std_in_grpo)
    actor = cfg.actor_config()
    actor.global_batch_info.update(dp_size=1, batch_num_tokens=int(lengths.sum()), global_batch_size=len(flat),
                                   loss_scale_factor=adv.shape[1])
    aggregate = partial(core_algos.agg_loss, loss_agg_mode=cfg.loss_agg_mode, **actor.global_batch_info)
    seq = [len(g.prompt_ids) + len(g.response_ids) for g in flat]
    micro = token_batches(seq, cfg.micro_batch_tokens)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    metrics: dict[str, float] = defaultdict(float)
    for rows in micro:
        ids = ([flat[i].prompt_ids for i in rows], [flat[i].response_ids for i in rows])
        logits, targets, mask = response_logits(model, *ids, pad_id)
        logp = logprobs_from_logits(logits, targets)
        loss, pg_metrics = core_algos.get_policy_loss_fn("vanilla")(
            old_log_prob=logp.detach(), log_prob=logp, advantages=adv[rows, : mask.shape[1]], response_mask=mask,
            loss_agg_mode=cfg.loss_agg_mode, config=actor,
        )
        metrics["actor/pg_loss"] += loss.item()
        share = float(mask.sum()) / float(lengths.sum())  # the micro-batch's masked means, weighted by its tokens
        for key, value in pg_metrics.items():
            metrics[key] += share * value
        if cfg.entropy_coeff:
            entropy = aggregate(entropy_from_logits(logits), mask)
            loss = loss - cfg.entropy_coeff * entropy
            metrics["actor/entropy"] += entropy.item()
        if cfg.use_kl_loss:
            with torch.no_grad():
                ref_logits, _, _ = response_logits(ref_model, *ids, pad_id)
                ref_logp = logprobs_from_logits(ref_logits, targets)
            kl = aggregate(core_algos.kl_penalty(logp, ref_logp, cfg.kl_loss_type), mask)
            loss = loss + cfg.kl_loss_coef * kl
            metrics["actor/kl_loss"] += kl.item()
        loss.backward()
    metrics["actor/grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
    optimizer.step()
    group_rewards = rewards.view(len(batch), cfg.n)
    padded = sum(len(rows) * max(seq[i] for i in rows) for rows in micro)  # each micro-batch right-padded
    metrics["compute/flops"] = step_flops(model, seq, padded, cfg.use_kl_loss)
    metrics["batch/micro_batches"] = len(micro)
    metrics |= {
        "critic/score/mean": float(rewards.mean()),
        "batch/solve_all": float((group_rewards.min(1).values == 1).float().mean()),
        "batch/solve_none": float((group_rewards.max(1).values == 0).float().mean()),
        "response_length/mean": float(lengths.float().mean()),
    }
    return dict(metrics)
