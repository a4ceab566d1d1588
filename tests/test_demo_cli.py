"""The main job's entry point: hydra composition of configs/tiny_cpu.yaml and its presets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        return compose(config_name="tiny_cpu", overrides=list(overrides))


def test_quick_preset_overrides_defaults_and_cli_overrides_preset():
    base = _compose()
    assert base.policy.warmup_steps == 650 and base.task.n_train == 600
    quick = _compose("preset=quick")
    assert quick.policy.warmup_steps == 300 and quick.task.n_train == 150
    assert _compose("preset=quick", "task.n_train=90").task.n_train == 90
    assert quick.output_dir == "outputs/tiny_cpu"


@pytest.mark.slow
def test_quick_demo_writes_summary(tmp_path):
    out = tmp_path / "run"
    subprocess.run(
        [sys.executable, "-m", "cropi_verl.local.main", "preset=quick", f"output_dir={out}",
         f"policy.cache_dir={tmp_path / 'cache'}"],
        check=True, cwd=ROOT, capture_output=True, timeout=600,
    )
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["initial"]["val"]) == {"val_add", "val_sub", "val_mixed"}
    assert 0.0 < summary["initial"]["pool"]["mean"] < 1.0
