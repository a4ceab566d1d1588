"""scripts/evaluate.py and scripts/score_influence.py end to end on a tiny random policy."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from influence_helpers import make_prompts, rollout_table
from policy_helpers import saved_random_policy, toy_prompts
from scripts_helpers import run_script


def test_evaluate_reports_per_set_and_targeted_means(tmp_path):
    policy = saved_random_policy(tmp_path / "policy")
    a, b = toy_prompts(tmp_path / "a.parquet", "val_add", n=3), toy_prompts(tmp_path / "b.parquet", "val_sub", n=3)
    out = run_script("evaluate.py", "--model", str(policy), "--set", f"add={a}", "--set", f"sub={b}",
                     "--targeted", "add", "--k", "2", "--max-new-tokens", "4")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(res["val"]) == {"add", "sub"} and res["targeted"] == res["val"]["add"]
    assert res["untargeted"] == res["val"]["sub"]
    bad = run_script("evaluate.py", "--model", str(policy), "--set", str(a), check=False)
    assert bad.returncode == 2 and "--set expects NAME=PATH" in bad.stderr


def test_score_influence_writes_scores_and_a_selection(tmp_path):
    policy = saved_random_policy(tmp_path / "policy")
    rollout_table(make_prompts(20, zero_every=4)).to_parquet(tmp_path / "train.parquet")
    rollout_table(make_prompts(5, seed=2)).to_parquet(tmp_path / "val.parquet")
    run_script("score_influence.py", "--model", str(policy), "--train-rollouts", str(tmp_path / "train.parquet"),
               "--val", f"v={tmp_path / 'val.parquet'}", "--out", str(tmp_path / "out"), "--k", "256",
               "--fraction", "0.25")
    sel = json.loads((tmp_path / "out" / "selection.json").read_text())
    scores = pd.read_parquet(tmp_path / "out" / "scores.parquet")
    assert len(sel["selected"]) == 5 and sel["n_zero_advantage"] == 5
    assert (scores["skipped"] == "zero_advantage").sum() == 5 and scores["score_v"].notna().sum() == 15
    assert sorted(scores.loc[scores.selected_rank >= 0, "prompt_id"]) == sorted(sel["selected"])
    # the rollouts change (a reward fixed) and the same command runs again: refused, not resumed from the old features
    frame = pd.read_parquet(tmp_path / "train.parquet")
    frame.at[1, "reward"] = [1.0 - r for r in frame.at[1, "reward"]]
    frame.to_parquet(tmp_path / "train.parquet")
    again = run_script("score_influence.py", "--model", str(policy), "--train-rollouts", str(tmp_path / "train.parquet"),
                       "--val", f"v={tmp_path / 'val.parquet'}", "--out", str(tmp_path / "out"), "--k", "256",
                       "--fraction", "0.25", check=False)
    assert again.returncode == 2 and "feature store was written for a different run (inputs: store has" in again.stderr


def test_a_name_given_twice_is_a_usage_error_not_the_last_one_silently(capsys):
    import argparse

    from cropi_verl.utils.cli import named_paths

    with pytest.raises(SystemExit) as e:
        named_paths(argparse.ArgumentParser(prog="score_influence.py"), ["add=A", "add=B"], "--val")
    assert e.value.code == 2 and "--val names 'add' twice (A and B): give each set once" in capsys.readouterr().err
