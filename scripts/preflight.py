#!/usr/bin/env python
"""Check a CROPI run before the GPU job starts: config, data, offline rollouts, validation sets, disk.

    python scripts/preflight.py [hydra overrides of configs/cropi_trainer.yaml]   (the recipes run it first)

Reports every problem at once (exit 1), else a summary (exit 0):
- the ``cropi:`` config checks (fraction, strategy, files, scoring sets, save_freq vs stage length);
- ``data.train_files`` / ``data.val_files``: verl-format schema;
- ``cropi.train_rollouts``: record schema, prompt-id coverage of the training file, the offline pass-rate
  summary and how many prompts are zero-advantage (they can never be selected by influence);
- each ``cropi.val_rollouts`` set: usable (non-zero-advantage) prompts, at least one;
- the expected feature-store size (per influence pass: scored prompts x k x 4 bytes) and the free disk space.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cropi_verl.data.verl_format import read_verl_parquet, row_ids
from cropi_verl.influence.gradients import is_zero_advantage
from cropi_verl.rollout.records import RECORD_COLUMNS, to_prompt_rollouts
from cropi_verl.trainer.curriculum_config import check_cropi_config

ROOT = Path(__file__).resolve().parents[1]


def _files(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def _rollouts(path: str, label: str, problems: list[str]) -> pd.DataFrame | None:
    try:
        frame = pd.read_parquet(path)
    except Exception as e:  # unreadable: reported, the other checks go on
        problems.append(f"{label}={path}: unreadable parquet ({e})")
        return None
    missing = [c for c in RECORD_COLUMNS if c not in frame.columns]
    if missing:
        problems.append(f"{label}={path}: not an offline-rollouts file, missing columns {missing}")
        return None
    return frame


def _zero_advantage(frame: pd.DataFrame) -> np.ndarray:
    """Per prompt: its unflagged rewards are all equal (or fewer than two), so its POPI gradient is zero."""
    return np.array([is_zero_advantage(p.rewards) for p in to_prompt_rollouts(frame)], dtype=bool)


def preflight(cfg) -> tuple[list[str], list[str]]:
    """(problems, summary lines) for a composed cropi_trainer config."""
    problems: list[str] = []
    lines: list[str] = []
    cropi = OmegaConf.to_container(cfg.cropi, resolve=True)
    try:
        check_cropi_config(cropi, OmegaConf.to_container(cfg.trainer, resolve=True))
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
    store = scored * k * 4
    passes = cropi["num_stages"] if cropi.get("rescore", True) and cropi["strategy"] != "influence_oneshot" else 1
    out_dir = Path(cropi["output_dir"])
    probe = next((p for p in [out_dir, *out_dir.parents] if p.exists()), Path("."))
    free = shutil.disk_usage(probe).free
    lines.append(f"feature stores: {store / 2**30:.2f} GiB per influence pass x {passes} passes; "
                 f"{free / 2**30:.1f} GiB free under {probe}")
    if store * passes > free:
        problems.append(f"not enough disk under {probe}: the feature stores need {store * passes / 2**30:.1f} GiB, "
                        f"{free / 2**30:.1f} GiB free")
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
