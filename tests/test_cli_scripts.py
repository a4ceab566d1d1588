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


def _demo_result(run, name, seed, selections, scored, flops, curve):
    """A finished run's result.json; ``scored``: prompts given to each pass, of which 10 zero-advantage (recorded as
    ``n_gradients`` in run B, as the pool and the zero-advantage count in run A, as runs before it did)."""
    stats = [{"n_gradients": n - 10} if "b" in run.name else {"n_pool": n, "n_zero_advantage": 10} for n in scored]
    stages = [{"selected_ids": ids, "settings": {"seed": seed},
               "stats": st | {"seconds": 1.0 + n / 10, "pass_flops": f}}
              for ids, n, f, st in zip(selections, scored, flops, stats)]
    history = [{"step": 5 * i, "targeted": acc} for i, acc in enumerate(curve)]
    (run / name).mkdir(parents=True)
    (run / name / "result.json").write_text(json.dumps({"stages": stages, "history": history}))


def test_compare_runs_reports_overlaps_costs_and_curves_by_hand(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for run, name, seed in ((a, "cropi", 0), (a, "cropi.seed1", 1), (b, "cropi", 0), (b, "cropi.seed1", 1)):
        full = run == a
        sel = [[1, 2, 3, 4], [5, 6, 7, 8] if full or seed == 0 else [5, 6, 9, 10]]
        _demo_result(run, name, seed, sel, [40, 40 if full else 20], [100.0, 100.0 if full else 25.0],
                     [0.1, 0.3, 0.5] if full else [0.1, 0.3 - 0.01 * seed, 0.46])
    (a / "cropi.seed2").mkdir()  # an unfinished seed is left out
    out = run_script("compare_runs.py", str(a), str(b))
    line = json.loads(out.stdout.strip().splitlines()[-1])
    assert line["seeds"] == [0, 1] and line["overlap_by_stage"] == [1.0, 0.75]  # (4/4 + 2/4) / 2
    assert line["gradients_ratio"] == round((20 - 10) / (40 - 10), 4)  # the JSON line rounds to 4 digits
    assert line["pass_seconds_ratio"] == pytest.approx(3.0 / 5.0) and line["pass_flops_ratio"] == 0.25
    assert line["mean_curve_diff"] == pytest.approx((-0.005 - 0.04) / 2) and line["final_diff"] == pytest.approx(-0.04)
    assert line["best_diff"] == pytest.approx(-0.04) and line["as_accurate"] is False
    assert json.loads(run_script("compare_runs.py", str(a), str(a)).stdout.splitlines()[-1])["as_accurate"] is True
    bad = run_script("compare_runs.py", str(a), str(tmp_path / "none"), check=False)
    assert bad.returncode == 2 and f"{tmp_path / 'none'}: not a directory" in bad.stderr
    bad = run_script("compare_runs.py", str(a), str(b), "--tolerance", "-1", check=False)
    assert bad.returncode == 2 and "argument --tolerance: expected a number >= 0, got '-1'" in bad.stderr
    bad = run_script("drift_check.py", str(a), "--stages", "1,x", check=False)
    assert bad.returncode == 2 and "argument --stages: expected all, latest or stage numbers" in bad.stderr


def test_bench_gradients_times_a_model_folder_on_real_rollouts(tmp_path):
    """``bench_gradients.py --lengths realistic --model DIR --rollouts FILE``: the folder's weights on the file's first
    scorable prompts; the real-token count is the file's, and the three layouts give the same features."""
    from policy_helpers import saved_chat_end_policy

    folder = saved_chat_end_policy(tmp_path / "model")
    prompts = make_prompts(8, seed=3, zero_every=4)  # prompts 0 and 4 zero-advantage
    rollout_table(prompts).to_parquet(tmp_path / "train.parquet")
    out = run_script("bench_gradients.py", "--lengths", "realistic", "--model", str(folder), "--rollouts",
                     str(tmp_path / "train.parquet"), "--prompts", "3", "--repeats", "1", "--k", "64")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    timed = [p for i, p in enumerate(prompts) if i % 4][:3]
    assert res["real_tokens"] == sum(len(p.prompt_ids) + len(r) for p in timed for r in p.responses)
    assert res["max_rel_err"] < 1e-4 and res["real_tokens_per_s_packed"] > 0
    bad = run_script("bench_gradients.py", "--lengths", "realistic", "--model", str(folder), "--rollouts",
                     str(tmp_path / "train.parquet"), "--prompts", "7", check=False)
    assert bad.returncode == 2 and "6 prompts with a gradient, fewer than --prompts 7" in bad.stderr


def test_bench_generation_counts_exactly_the_forced_tokens():
    """``bench_generation.py`` on the tiny shape with HF generate (no vLLM here): rows x new tokens in its JSON."""
    out = run_script("bench_generation.py", "--model", "tiny", "--backend", "hf", "--prompts", "2", "--n", "3",
                     "--prompt-tokens", "3", "--new-tokens", "5")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["backend"] == "hf_generate" and res["rows"] == 6 and res["new_tokens"] == 5
    assert res["tokens_per_s"] == pytest.approx(6 * 5 / res["seconds"], rel=0.05)


def test_adaptive_collection_by_hand(tmp_path):
    """Four prompts of K = 4: the counts, the cost and the selection overlap of first draws 2 and 3, by hand."""
    from cropi_verl.influence.gradients import PromptRollouts

    rewards = {0: [1, 1, 1, 1], 1: [0, 0, 1, 0], 2: [0, 1, 0, 0], 3: [0, 0, 0, 0]}
    prompts = [PromptRollouts(p, [5, 6], [[7, 8]] * 4, [[-1.0, -1.0]] * 4, [float(x) for x in r])
               for p, r in rewards.items()]
    rollout_table(prompts).to_parquet(tmp_path / "roll.parquet")
    pd.DataFrame({"prompt_id": [0, 1, 2, 3], "score_v": [float("nan"), 0.9, 0.5, float("nan")]}).to_parquet(
        tmp_path / "scores.parquet")
    out = run_script("adaptive_collection.py", str(tmp_path / "roll.parquet"), "--first", "2", "3", "--scores",
                     str(tmp_path / "scores.parquet"), "--fraction", "0.5")
    two, three = json.loads(out.stdout.strip().splitlines()[-1])["rows"]
    # k0 = 2: prompts 0, 1, 3 stop; prompt 1 is mixed at K (missed); 2 x 3 + 4 responses of 16
    assert (two["stopped"], two["zero_advantage"], two["missed"], two["kept_wrongly"]) == (3, 2, 1, 0)
    assert two["cost"] == pytest.approx(10 / 16) and two["selection_overlap"] == 0.5  # {1, 2} against {2}
    assert (three["stopped"], three["missed"]) == (2, 0) and three["cost"] == pytest.approx(14 / 16)
    assert three["selection_overlap"] == 1.0
    bad = run_script("adaptive_collection.py", str(tmp_path / "roll.parquet"), "--first", "1", check=False)
    assert bad.returncode == 2 and "expected a first draw between 2 and K = 4" in bad.stderr
