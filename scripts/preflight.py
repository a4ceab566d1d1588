#!/usr/bin/env python
"""Check a CROPI run before the GPU job starts: config, data, offline rollouts, validation sets, disk.

    python scripts/preflight.py [hydra overrides of configs/cropi_trainer.yaml]   (the recipes run it first)

Reports every problem at once (exit 1), else a summary (exit 0):
- the ``cropi:`` config checks (fraction, strategy, files, scoring sets, save_freq vs stage length);
- ``data.train_files`` / ``data.val_files``: verl-format schema;
- ``cropi.train_rollouts``: record schema, prompt-id coverage of the training file, the offline pass-rate
  summary and how many prompts are zero-advantage (they can never be selected by influence);
- each ``cropi.val_rollouts`` set: usable (non-zero-advantage) prompts, at least one;
- a disk plan: the actor checkpoints kept (``trainer.max_actor_ckpt_to_keep``; each: parameters from the model's
  config.json x (4 B fp32 FSDP shards + 8 B Adam + the hf_model copy in the model's dtype)), the feature stores
  (per influence pass: scored prompts x k x 4 bytes) and the rollouts on disk, against the free space.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cropi_verl.data.verl_format import read_verl_parquet, row_ids
from cropi_verl.influence.gradients import is_zero_advantage
from cropi_verl.rollout.records import RECORD_COLUMNS, unflagged
from cropi_verl.trainer.curriculum_config import check_composed_config

ROOT = Path(__file__).resolve().parents[1]
FSDP_BYTES, ADAM_BYTES = 4, 8  # per parameter in an actor checkpoint: fp32 model shards, Adam's two fp32 moments


def _files(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def _rollouts(path: str, label: str, problems: list[str]) -> pd.DataFrame | None:
    """The columns preflight reads (not the token lists) of a rollouts file; None, with a problem, if it is not one."""
    try:
        missing = [c for c in RECORD_COLUMNS if c not in pq.read_schema(path).names]
        if missing:
            problems.append(f"{label}={path}: not an offline-rollouts file, missing columns {missing}")
            return None
        return pd.read_parquet(path, columns=["prompt_id", "reward", "flag", "pass_rate"])
    except Exception as e:  # unreadable: reported, the other checks go on
        problems.append(f"{label}={path}: unreadable parquet ({e})")
        return None


def _zero_advantage(frame: pd.DataFrame) -> np.ndarray:
    """Per prompt: its unflagged rewards are all equal (or fewer than two), so its POPI gradient is zero (read
    from the reward and flag columns alone: no token lists are built)."""
    return np.array([is_zero_advantage([float(r[i]) for i in unflagged(f)]) for r, f in zip(frame["reward"], frame["flag"])],
                    dtype=bool)


def preflight(cfg) -> tuple[list[str], list[str]]:
    """(problems, summary lines) for a composed cropi_trainer config."""
    problems: list[str] = []
    lines: list[str] = []
    cropi = OmegaConf.to_container(cfg.cropi, resolve=True)
    try:
        check_composed_config(cfg)
    except ValueError as e:
        problems += str(e).removeprefix("bad CROPI config: ").split("; ")
    train_ids: set[int] = set()
    for key in ("train_files", "val_files"):
        for path in _files(cfg.data[key]):
            try:
                frame = read_verl_parquet(path)
            except Exception as e:
                problems.append(f"data.{key}: {e}")
                continue
            lines.append(f"data.{key}: {path}: {len(frame)} prompts")
            if key == "train_files":
                train_ids |= set(row_ids(frame))
    k = cropi["projection"]["k"]
    scored = 0
    if cropi.get("train_rollouts") and Path(cropi["train_rollouts"]).is_file():
        roll = _rollouts(cropi["train_rollouts"], "cropi.train_rollouts", problems)
        if roll is not None:
            ids = set(int(i) for i in roll["prompt_id"])
            foreign = ids - train_ids if train_ids else set()
            if foreign:
                problems.append(f"cropi.train_rollouts: {len(foreign)} prompt ids are not in data.train_files "
                                f"(first: {sorted(foreign)[:5]}): rollouts of another dataset?")
            zero = _zero_advantage(roll)
            scored = int((~zero).sum())
            p = roll["pass_rate"].to_numpy(float)
            lines.append(f"cropi.train_rollouts: {len(roll)} prompts, covering {len(ids & train_ids)}/{len(train_ids)} "
                         f"of the training file; pass rate mean {np.nanmean(p):.3f}, quartiles "
                         f"{np.round(np.nanpercentile(p, [25, 50, 75]), 3).tolist()}; zero-advantage {int(zero.sum())} "
                         f"({zero.mean():.0%}) -> {scored} can be scored")
            frac = cropi["fraction"]
            n_select = round(frac * len(roll)) if isinstance(frac, (int, float)) and 0 < frac <= 1 else 0
            if cropi["strategy"] in ("cropi", "influence_max", "influence_oneshot") and scored < n_select:
                problems.append(f"only {scored} prompts can be scored but cropi.fraction selects {n_select}")
    for name, path in (cropi.get("val_rollouts") or {}).items():
        if not Path(path).is_file():
            continue  # reported by the config checks
        roll = _rollouts(path, f"cropi.val_rollouts.{name}", problems)
        if roll is not None:
            usable = int((~_zero_advantage(roll)).sum())
            lines.append(f"cropi.val_rollouts.{name}: {len(roll)} prompts, {usable} usable")
            if usable == 0:
                problems.append(f"cropi.val_rollouts.{name}: no prompt has a non-zero advantage (every response "
                                "scored the same): its validation gradient would be zero")
            scored += min(usable, cropi["max_val_prompts"])
    passes = cropi["num_stages"] if cropi.get("rescore", True) and cropi["strategy"] != "influence_oneshot" else 1
    disk_problems, disk_lines = disk_plan(cfg, scored * k * 4, passes)
    return problems + disk_problems, lines + disk_lines


def model_size(model_path: str) -> tuple[int, torch.dtype]:
    """(parameter count, checkpoint dtype) of a model from its config.json alone (a meta-device instance)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    dtype = getattr(config, "dtype", None) or torch.float32
    return sum(p.numel() for p in model.parameters()), getattr(torch, dtype) if isinstance(dtype, str) else dtype


def checkpoint_bytes(params: int, dtype: torch.dtype) -> int:
    """One actor checkpoint: FSDP model shards (fp32) + Adam's two fp32 moments + ``hf_model`` in ``dtype``
    (``data.pt`` and the CROPI stage file are negligible)."""
    return params * (FSDP_BYTES + ADAM_BYTES + dtype.itemsize)


def checkpoints_kept(cfg) -> int:
    """Actor checkpoints on disk at the end: one per ``save_freq`` steps of the run, at most
    ``trainer.max_actor_ckpt_to_keep`` (null: all)."""
    steps, save_freq = cfg.cropi.num_stages * cfg.cropi.steps_per_stage, cfg.trainer.save_freq
    saves = steps // save_freq if save_freq > 0 else 0
    keep = cfg.trainer.get("max_actor_ckpt_to_keep")
    return saves if keep is None else min(saves, keep)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _free(path: Path) -> tuple[Path, int, int]:
    """(nearest existing ancestor of ``path``, its device, its free bytes)."""
    probe = next((p for p in [path, *path.parents] if p.exists()), Path("."))
    return probe, probe.stat().st_dev, shutil.disk_usage(probe).free


def disk_plan(cfg, store_per_pass: int, passes: int) -> tuple[list[str], list[str]]:
    """(problems, lines): the kept checkpoints and the feature stores against the free space where they go,
    and the rollouts already on disk."""
    model = cfg.actor_rollout_ref.model.path
    try:
        params, dtype = model_size(model)
    except Exception as e:  # a hub id not downloaded, an unknown architecture: the plan goes on without it
        lines = [f"disk plan: cannot read the config of {model} ({type(e).__name__}); checkpoints not counted"]
        ckpt = 0
    else:
        kept, one = checkpoints_kept(cfg), checkpoint_bytes(params, dtype)
        ckpt = kept * one
        lines = [f"disk plan: checkpoints {kept} kept x {_size(one)} = {_size(ckpt)} ({params:,} params x (4 B fp32 "
                 f"shards + 8 B Adam + {dtype.itemsize} B {str(dtype).removeprefix('torch.')} hf_model))"]
    rollouts = sum(Path(p).stat().st_size for p in [cfg.cropi.train_rollouts, *(cfg.cropi.val_rollouts or {}).values()]
                   if p and Path(p).is_file())
    lines.append(f"disk plan: feature stores {_size(store_per_pass)} per influence pass x {passes} passes; "
                 f"rollouts {_size(rollouts)} (on disk)")
    need: dict[int, list] = {}
    for path, size in ((Path(cfg.trainer.default_local_dir), ckpt), (Path(cfg.cropi.output_dir), store_per_pass * passes)):
        probe, dev, free = _free(path)
        need.setdefault(dev, [probe, free, 0])[2] += size
    problems = []
    for probe, free, size in need.values():
        lines.append(f"disk plan: {_size(size)} to write under {probe}, {_size(free)} free")
        if size > free:
            problems.append(f"not enough disk under {probe}: checkpoints and feature stores need {_size(size)}, "
                            f"{_size(free)} free")
    return problems, lines


def main(argv: list[str] | None = None) -> int:
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        cfg = compose(config_name="cropi_trainer", overrides=list(sys.argv[1:] if argv is None else argv))
    problems, lines = preflight(cfg)
    for line in lines:
        print(line)
    if problems:
        print(f"preflight: {len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    print("preflight: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
