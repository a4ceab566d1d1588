"""Compose the configs under ``configs/``; run the tiny demo (quick preset) in a subprocess, optionally SIGKILLed at a
named point, and compare runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]


def compose_config(name: str, *overrides: str):
    """``configs/<name>.yaml`` composed with hydra overrides, as the entry points see it."""
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        return compose(config_name=name, overrides=list(overrides))


def run_demo(out: Path, *overrides: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, CROPI_KILL_AT=kill_at or "")
    return subprocess.run([sys.executable, "-m", "cropi_verl.local.main", "preset=quick", f"output_dir={out}", *overrides],
                          cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)


def final_checkpoint(run: Path, method: str = "cropi") -> dict:
    ckpt = run / method / "ckpt"
    return torch.load(ckpt / json.loads((ckpt / "latest.json").read_text())["path"], weights_only=False)


def without_seconds(history: list[dict]) -> list[dict]:
    """Eval records without their cumulative seconds (timings differ between any two runs)."""
    return [{k: v for k, v in r.items() if k not in ("train_seconds", "select_seconds")} for r in history]


def assert_same_run(ref: Path, got: Path, method: str = "cropi", stages: int = 2) -> None:
    """Same selection at every stage, same final model (bit for bit), sampler position and eval history."""
    for s in range(stages):
        name = f"{method}/curriculum/stage_{s:03d}/state.json"
        assert json.loads((got / name).read_text())["selected_ids"] == json.loads((ref / name).read_text())["selected_ids"], name
    a, b = final_checkpoint(ref, method), final_checkpoint(got, method)
    assert a["step"] == b["step"] and a["loader"] == b["loader"]
    assert without_seconds(a["history"]) == without_seconds(b["history"])
    for k, v in a["model"].items():
        assert torch.equal(b["model"][k], v), k


def half_written(run: Path) -> list[Path]:
    """Temp files an atomic write would leave behind if it were not atomic."""
    return list(run.rglob("*.tmp"))
