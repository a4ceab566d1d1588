"""The main job (the tiny CPU CROPI demo): hydra composition, the quick preset end to end, and a kill mid-stage
followed by a resume with the same command, which must reproduce the uninterrupted run bit for bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
METHODS = {"cropi", "full", "random", "pass_rate", "learnability"}


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        return compose(config_name="tiny_cpu", overrides=list(overrides))


def _demo(out: Path, *overrides: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, CROPI_KILL_AT=kill_at or "")
    return subprocess.run([sys.executable, "-m", "cropi_verl.local.main", "preset=quick", f"output_dir={out}", *overrides],
                          cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)


def test_quick_preset_overrides_defaults_and_cli_overrides_preset():
    base = _compose()
    assert base.policy.warmup_steps == 650 and base.task.n_train == 600
    assert set(base.methods) == METHODS and base.curriculum.fraction == 0.1
    quick = _compose("preset=quick")
    assert quick.policy.warmup_steps == 300 and quick.task.n_train == 150
    assert _compose("preset=quick", "task.n_train=90").task.n_train == 90
    assert quick.output_dir == "outputs/tiny_cpu"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "run"
    proc = _demo(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_quick_demo_writes_summary_with_all_methods(quick_run):
    summary = json.loads((quick_run / "summary.json").read_text())
    assert set(summary["methods"]) == METHODS and set(summary["curves"]) == METHODS
    assert set(summary["speedup"]) == METHODS - {"full"}
    for curve in summary["curves"].values():
        assert [r["step"] for r in curve] == [0, 3, 6]
        assert set(curve[0]["val"]) == {"val_add", "val_sub", "val_mixed"}
    assert summary["selection_cost"]["pass_over_stage"] > 0
    assert 0 < summary["pool"]["mean"] < 1
    for name in ("curves.png", "selection_cropi.png", "selection_random.png"):
        assert (quick_run / name).stat().st_size > 10_000
    stages = json.loads((quick_run / "cropi" / "result.json").read_text())["stages"]
    assert [len(s["selected_ids"]) for s in stages] == [15, 15]  # 10% of 150, at each of the 2 stages


def _final(run: Path) -> dict:
    ckpt = run / "cropi" / "ckpt"
    return torch.load(ckpt / json.loads((ckpt / "latest.json").read_text())["path"], weights_only=False)


def test_kill_mid_stage_then_resume_matches_uninterrupted_run(quick_run, tmp_path):
    out = tmp_path / "killed"
    # quick: 2 stages x 3 steps, checkpoint every 2 steps; die after step 5 (stage 1), last checkpoint at step 4
    proc = _demo(out, "methods=[cropi]", kill_at="train_step:5")
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert json.loads((out / "cropi" / "ckpt" / "latest.json").read_text())["step"] == 4
    assert not list(out.rglob("*.tmp")), "a half-written artifact was left behind"
    proc = _demo(out, "methods=[cropi]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref, got = _final(quick_run), _final(out)
    for s in (0, 1):
        name = f"cropi/curriculum/stage_{s:03d}/state.json"
        assert json.loads((out / name).read_text())["selected_ids"] == json.loads((quick_run / name).read_text())["selected_ids"]
    assert got["step"] == ref["step"] == 6
    assert got["loader"] == ref["loader"]  # the same sampler position
    assert got["history"] == ref["history"]
    for k, v in ref["model"].items():
        assert torch.equal(got["model"][k], v), k
