"""scripts/preflight.py: a good run passes with a summary; a bad one lists every problem at once."""

from __future__ import annotations

from dataclasses import replace

from cropi_verl.data.toy_task import build_toy_task
from cropi_verl.data.verl_format import row_ids
from influence_helpers import make_prompts, rollout_table
from policy_helpers import TASK, toy_prompts
from scripts_helpers import run_script


def _setup(tmp_path):
    train = toy_prompts(tmp_path / "train.parquet")
    ids = row_ids(build_toy_task(TASK)["train"])
    good = [replace(p, prompt_id=i) for p, i in zip(make_prompts(len(ids), zero_every=2), ids)]
    rollout_table(good).to_parquet(tmp_path / "train_rollouts.parquet")
    rollout_table(make_prompts(5, seed=3)).to_parquet(tmp_path / "val_rollouts.parquet")
    return train


def _args(tmp_path, train, *extra):
    return (f"data.train_files={train}", f"data.val_files={train}",
            f"cropi.train_rollouts={tmp_path / 'train_rollouts.parquet'}",
            f"cropi.val_rollouts={{v:{tmp_path / 'val_rollouts.parquet'}}}", f"cropi.output_dir={tmp_path / 'out'}",
            "trainer.save_freq=10", "cropi.steps_per_stage=20", *extra)


def test_good_run_passes_with_a_summary(tmp_path):
    train = _setup(tmp_path)
    out = run_script("preflight.py", *_args(tmp_path, train))
    assert "preflight: ok" in out.stdout
    assert "60 prompts, covering 60/60 of the training file" in out.stdout
    assert "zero-advantage 30 (50%) -> 30 can be scored" in out.stdout
    assert "cropi.val_rollouts.v: 5 prompts, 5 usable" in out.stdout


def test_every_problem_is_listed_at_once(tmp_path):
    train = _setup(tmp_path)
    foreign = rollout_table(make_prompts(4))  # prompt ids 100.. are not rows of the training file
    foreign.to_parquet(tmp_path / "train_rollouts.parquet")
    rollout_table(make_prompts(3, zero_every=1)).to_parquet(tmp_path / "val_rollouts.parquet")  # all solved
    out = run_script("preflight.py", *_args(tmp_path, train, "cropi.fraction=2", "trainer.save_freq=7"), check=False)
    assert out.returncode == 1
    for part in ("preflight: 4 problem(s)", "cropi.fraction=2", "save_freq=7 must divide",
                 "4 prompt ids are not in data.train_files", "cropi.val_rollouts.v: no prompt has a non-zero advantage"):
        assert part in out.stderr, part
