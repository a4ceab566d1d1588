"""The main job on its embedded default: the tiny CPU CROPI demo (``python -m cropi_verl.local.main [overrides]``).

Steps so far: write the embedded task's parquet files, build (or load from cache) the warmed-up tiny policy,
measure its initial avg@k pass rate per skill family / tier on the pool and on each validation set, and write
``${output_dir}/summary.json``. The curriculum loop plugs in after these steps.
"""

from __future__ import annotations

import logging
import time
from dataclasses import fields
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer

from cropi_verl.data.toy_task import TARGETED_SETS, UNTARGETED_SETS, ToyTaskConfig, build_toy_task
from cropi_verl.data.verl_format import write_verl_parquet
from cropi_verl.eval.accuracy import avg_at_k, mean_by
from cropi_verl.models.tiny_policy import TinyPolicyConfig, build_tiny_policy
from cropi_verl.utils.atomic import atomic_write_json

log = logging.getLogger("cropi_verl")


def _dataclass_from(cls, node: DictConfig, **extra):
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in OmegaConf.to_container(node).items() if k in names}, **extra)


def prepare(cfg: DictConfig) -> tuple[dict, Path]:
    """Write the task's splits under ``${output_dir}/data`` and build the policy; returns (frames, policy dir)."""
    task = _dataclass_from(ToyTaskConfig, cfg.task)
    frames = build_toy_task(task)
    data_dir = Path(cfg.output_dir) / "data"
    for split, frame in frames.items():
        write_verl_parquet(frame, data_dir / f"{split}.parquet")
    cache = Path(cfg.policy.cache_dir) / "tiny_policy" if cfg.policy.cache_dir else None
    t0 = time.time()
    policy_dir = build_tiny_policy(_dataclass_from(TinyPolicyConfig, cfg.policy, task=task), cache)
    log.info("tiny policy: %s (%.1fs)", policy_dir, time.time() - t0)
    return frames, policy_dir


def initial_pass_rates(cfg: DictConfig, frames: dict, policy_dir: Path) -> dict:
    """avg@k of the initial policy: per family and tier on (a sample of) the pool, and per validation set."""
    model = AutoModelForCausalLM.from_pretrained(policy_dir)
    tok = AutoTokenizer.from_pretrained(policy_dir)
    ev = cfg.eval
    pool = frames["train"]
    if ev.pool_sample is not None and ev.pool_sample < len(pool):
        pool = pool.sample(n=ev.pool_sample, random_state=cfg.seed).reset_index(drop=True)
    kw = dict(k=ev.k, temperature=ev.temperature, max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size)
    acc = avg_at_k(model, tok, pool, seed=cfg.seed, progress=True, **kw)
    out = {
        "pool": {
            "mean": float(np.mean(acc)),
            "by_family": mean_by(pool, acc, "family"),
            "by_tier": mean_by(pool, acc, "tier"),
            "zero_advantage_fraction": float(np.mean((acc == 0) | (acc == 1))),
        },
        "val": {},
    }
    for name in TARGETED_SETS + UNTARGETED_SETS:
        out["val"][name] = float(np.mean(avg_at_k(model, tok, frames[name], seed=cfg.seed, **kw)))
    out["targeted"] = float(np.mean([out["val"][n] for n in TARGETED_SETS]))
    out["untargeted"] = float(np.mean([out["val"][n] for n in UNTARGETED_SETS]))
    return out


def print_table(initial: dict) -> None:
    pool = initial["pool"]
    print("\ninitial policy avg@k")
    print(f"{'group':<16}{'accuracy':>10}")
    for fam, a in pool["by_family"].items():
        print(f"{'pool/' + fam:<16}{a:>10.3f}")
    for tier, a in pool["by_tier"].items():
        print(f"{'pool/tier' + tier:<16}{a:>10.3f}")
    print(f"{'pool (all)':<16}{pool['mean']:>10.3f}")
    for name, a in initial["val"].items():
        print(f"{name:<16}{a:>10.3f}")
    print(f"{'targeted':<16}{initial['targeted']:>10.3f}\n{'untargeted':<16}{initial['untargeted']:>10.3f}")


@hydra.main(config_path="../../configs", config_name="tiny_cpu", version_base=None)
def main(cfg: DictConfig) -> None:
    torch.set_num_threads(cfg.threads)
    t0 = time.time()
    frames, policy_dir = prepare(cfg)
    initial = initial_pass_rates(cfg, frames, policy_dir)
    print_table(initial)
    summary = {
        "run_name": cfg.run_name,
        "policy_dir": str(policy_dir),
        "initial": initial,
        "wall_seconds": round(time.time() - t0, 1),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    path = atomic_write_json(summary, Path(cfg.output_dir) / "summary.json")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
