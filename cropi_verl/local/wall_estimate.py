"""The demo's wall time, estimated before its work starts from three rates measured on this machine
(``measure_rates``), on B n rows of pool prompts (B = grpo.batch_size, n = grpo.n: a GRPO step's sampling):

    f  seconds per prompt position of a forward without gradients: a ``generate`` call of 1 new token
    g  seconds per generated position of one row: a call of 17 forced new tokens, less the first, over 16 B n
    u  seconds per position of a forward + backward (one micro-batch of at most 256 positions)

A ``generate`` call runs until its longest response ends. Before the collection that is taken as the token budget
T (an upper bound); once beta's pool rollouts exist, as min(T, L) with L the mean over the collection's generate
calls of their longest response (``longest_per_call``). p is the pool's mean chat-prompt length. For N rows,

    sampling                     N (T g + p f)
    the offline collection       sampling + beta's log-prob forward N (p + T) f, for the splits not yet collected
    a GRPO step                  sampling of B n rows + their update B n (p + T) u
    an evaluation                sampling of n_val k rows per validation set
    an influence pass            (n_train n_off + targeted sets x min(n_val, max_val_prompts) val_n) (p + T) u

and a method's run is its steps, its evaluations (step 0, every ``eval.every`` steps and the last) and, for influence
strategies, one pass per stage. A finished method (``result.json``) counts 0; an interrupted one counts in full.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from cropi_verl.curriculum.schedule import INFLUENCE_STRATEGIES
from cropi_verl.models.special_tokens import model_token_rule
from cropi_verl.rollout.hf_backend import left_pad

CALIBRATION_TOKENS = 16  # generated positions timed (after the first)
TRAIN_POSITIONS = 256  # positions of the calibrating forward + backward (at most, fewer with a smaller budget)


@dataclass(frozen=True)
class Rates:
    forward_s: float  # f: seconds per prompt position of a forward without gradients
    gen_s: float  # g: seconds per generated position of one row
    train_s: float  # u: seconds per forward + backward position


def _timed_generate(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, pad_id: int, new: int) -> float:
    t0 = time.perf_counter()
    with torch.no_grad():
        model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=new, min_new_tokens=new,
                       pad_token_id=pad_id)
    return time.perf_counter() - t0


def measure_rates(model: torch.nn.Module, tokenizer, prompts: list[list[int]], rows: int, micro_tokens: int) -> Rates:
    """f, g and u (module docstring) on ``model``, with ``rows`` rows of the first prompts (cycled); the gradients
    of the forward + backward are dropped after."""
    rule = model_token_rule(model, tokenizer)
    ids, mask = left_pad([prompts[i % len(prompts)] for i in range(rows)], rule.pad_id)
    model.eval()
    first = _timed_generate(model, ids, mask, rule.pad_id, 1)
    more = _timed_generate(model, ids, mask, rule.pad_id, 1 + CALIBRATION_TOKENS)
    n_rows = max(1, min(rows, min(TRAIN_POSITIONS, micro_tokens) // ids.shape[1]))
    t0 = time.perf_counter()
    model(input_ids=ids[:n_rows], attention_mask=mask[:n_rows]).logits.float().mean().backward()
    train_s = (time.perf_counter() - t0) / (n_rows * ids.shape[1])
    model.zero_grad(set_to_none=True)
    return Rates(first / ids.numel(), max(more - first, 1e-9) / (rows * CALIBRATION_TOKENS), train_s)


def evaluations(total_steps: int, every: int) -> int:
    """Step 0, each step t <= total with t % every == 0, and the last."""
    return 1 + len({t for t in range(1, total_steps + 1) if t % every == 0 or t == total_steps})


def sampling_s(rows: float, prompt: float, budget: int, r: Rates) -> float:
    """N (T g + p f)."""
    return rows * (budget * r.gen_s + prompt * r.forward_s)


def longest_per_call(response_lengths: list[list[int]], prompts_per_call: int) -> float:
    """L: the mean over consecutive calls of ``prompts_per_call`` prompts of the call's longest response."""
    calls = [response_lengths[i:i + prompts_per_call] for i in range(0, len(response_lengths), prompts_per_call)]
    return float(np.mean([max(max(r) for r in call) for call in calls]))


def estimate(cfg: DictConfig, prompt_len: float, r: Rates, runs: dict[str, str], collected: set[str],
             longest: float | None = None) -> dict[str, float]:
    """Seconds per part (module docstring): 'collection' (of the splits not in ``collected``), and per run of
    ``runs`` (its name: its strategy); ``longest``: L, None before the collection (each budget T then)."""
    off, grpo, ev, cur, inf, task = cfg.offline, cfg.grpo, cfg.eval, cfg.curriculum, cfg.influence, cfg.task
    p = prompt_len
    cap = (lambda t: t) if longest is None else (lambda t: min(t, longest))
    split_rows = {"train": task.n_train * off.n, "val_add": task.n_val * off.val_n, "val_sub": task.n_val * off.val_n}
    rows = sum(n for s, n in split_rows.items() if s not in collected)
    t_off = cap(off.max_new_tokens)
    out = {"collection": sampling_s(rows, p, t_off, r) + rows * (p + t_off) * r.forward_s} if rows else {}
    steps = cur.num_stages * cur.steps_per_stage
    step_rows = grpo.batch_size * grpo.n
    t_step = cap(grpo.max_new_tokens)
    step_s = sampling_s(step_rows, p, t_step, r) + step_rows * (p + t_step) * r.train_s
    eval_s = 3 * sampling_s(task.n_val * ev.k, p, cap(ev.max_new_tokens), r)  # val_add, val_sub, val_mixed
    pass_rows = task.n_train * off.n + 2 * min(task.n_val, inf.max_val_prompts) * off.val_n
    pass_s = pass_rows * (p + t_off) * r.train_s
    for name, strategy in runs.items():
        passes = cur.num_stages if strategy in INFLUENCE_STRATEGIES else 0
        out[name] = steps * step_s + evaluations(steps, ev.every) * eval_s + passes * pass_s
    return out


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def estimate_lines(cfg: DictConfig, prompts: list[list[int]], rates: Rates, run_dirs: dict[Path, str],
                   collected: set[str], longest: float | None = None) -> list[str]:
    """What ``run_demo`` prints: the rates, each part's estimate and the total; ``run_dirs``: each method run's
    directory and strategy (a finished one, with ``result.json``, is reused and counts 0)."""
    done = sorted(d.name for d in run_dirs if (d / "result.json").is_file())
    runs = {d.name: s for d, s in run_dirs.items() if d.name not in done}
    parts = estimate(cfg, float(np.mean([len(p) for p in prompts])), rates, runs, collected, longest)
    total = sum(parts.values())
    basis = ("every generate call at its token budget" if longest is None else
             f"a generate call's longest response {longest:.0f} tokens, as in beta's pool rollouts")
    lines = [f"wall-time estimate{', at most' if longest is None else ''} ({basis}; measured here: "
             f"{1 / rates.gen_s:.0f} generated and {1 / rates.forward_s:.0f} prompt positions/s per row over "
             f"{cfg.grpo.batch_size * cfg.grpo.n} rows, {1 / rates.train_s:.0f} forward+backward positions/s): "
             f"{minutes(total)}"]
    lines += [f"  {name:<12} {minutes(s)}" for name, s in parts.items()]
    lines += [f"  {name:<12} finished (reused)" for name in done]
    return lines
