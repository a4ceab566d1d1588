"""The main job (the tiny CPU CROPI demo): hydra composition, the quick preset end to end, and a kill mid-stage
followed by a resume with the same command, which must reproduce the uninterrupted run bit for bit."""

from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path

import pytest
from demo_helpers import assert_same_run, compose_config, final_checkpoint, half_written, run_demo

METHODS = {"cropi", "full", "random", "pass_rate", "learnability"}
_compose = partial(compose_config, "tiny_cpu")


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
    proc = run_demo(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_quick_demo_writes_summary_with_all_methods(quick_run):
    summary = json.loads((quick_run / "summary.json").read_text())
    assert set(summary["methods"]) == METHODS and set(summary["curves"]) == METHODS
    assert set(summary["speedup"]) == set(summary["speedup_at_gain"]) == METHODS - {"full"}
    for curve in summary["curves"].values():
        assert [r["step"] for r in curve] == [0, 3, 6]
        assert set(curve[0]["val"]) == {"val_add", "val_sub", "val_mixed"}
    cost = summary["selection_cost"]
    assert cost["pass_over_stage"] > 0
    for total, val, pool in zip(cost["influence_pass_seconds"], cost["val_features_seconds"], cost["pool_features_seconds"]):
        assert 0 < val and 0 < pool and val + pool <= total  # the parts of each boundary's time
    assert 0 < summary["pool"]["mean"] < 1
    for name in ("curves.png", "selection_cropi.png", "selection_random.png"):
        assert (quick_run / name).stat().st_size > 10_000
    stages = json.loads((quick_run / "cropi" / "result.json").read_text())["stages"]
    assert [len(s["selected_ids"]) for s in stages] == [15, 15]  # 10% of 150, at each of the 2 stages
    assert_boundary_weights(quick_run, summary["policy_dir"])
    assert_wallclock(summary, json.loads((quick_run / "rollouts" / "collect_seconds.json").read_text()), stages)
    assert_compute(summary, quick_run, stages)


def assert_boundary_weights(run: Path, policy_dir: str) -> None:
    """CROPI keeps its weights at each boundary (stage 0's: the initial policy's, bit for bit; stage 1's: trained);
    a strategy without influence passes keeps none."""
    import torch
    from transformers import AutoModelForCausalLM

    initial = AutoModelForCausalLM.from_pretrained(policy_dir).state_dict()
    kept = [torch.load(run / "cropi" / "curriculum" / f"stage_{s:03d}" / "weights.pt") for s in (0, 1)]
    assert all(torch.equal(kept[0][k], v) for k, v in initial.items())
    assert not all(torch.equal(kept[1][k], v) for k, v in initial.items())
    assert not list((run / "random" / "curriculum").rglob("weights.pt"))


def assert_compute(summary: dict, run: Path, cropi_stages: list[dict]) -> None:
    """Every method's FLOPs by each eval: its collection charge (4 P per pool / targeted-set token: sampled, then
    beta's log-probs) + its GRPO steps + its influence passes, the last two as recorded; the speed-up reads them."""
    import pandas as pd
    from transformers import AutoModelForCausalLM

    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(summary["policy_dir"]).parameters())
    tokens = {}
    for split in ("train", "val_add", "val_sub"):
        frame = pd.read_parquet(run / "rollouts" / split / "rollouts.parquet")
        tokens[split] = sum(len(p) + len(r) for p, resp in zip(frame["prompt_token_ids"], frame["response_ids"])
                            for r in resp)
    charge = {"full": 0, "random": 0, "pass_rate": tokens["train"], "learnability": tokens["train"],
              "cropi": sum(tokens.values())}
    for name, curve in summary["curves"].items():
        assert summary["spent_flops"][name] == pytest.approx(
            [4 * params * charge[name] + r["train_flops"] + r["select_flops"] for r in curve])
        assert curve[0]["train_flops"] == 0 and curve[-1]["train_flops"] > 0
    passes = [s["stats"]["pass_flops"] for s in cropi_stages]
    assert [r["select_flops"] for r in summary["curves"]["cropi"]] == pytest.approx([0, passes[0], sum(passes)])
    assert set(summary["compute_speedup"]) == METHODS - {"full"}


def assert_wallclock(summary: dict, collect: dict, cropi_stages: list[dict]) -> None:
    """Every method's seconds: its training and boundaries so far plus the collection it selects from."""
    assert set(collect) == {"train", "val_add", "val_sub"} and all(v > 0 for v in collect.values())
    charge = {"full": 0.0, "random": 0.0, "pass_rate": collect["train"], "learnability": collect["train"],
              "cropi": sum(collect.values())}
    assert summary["selection_cost"]["offline_collection_seconds"] == collect
    # the cropi boundaries (steps 0 and 3) are counted from the step after them: evals at steps 0, 3, 6
    boundary = [s["stats"]["seconds"] for s in cropi_stages]
    assert [r["select_seconds"] for r in summary["curves"]["cropi"]] == pytest.approx([0, boundary[0], sum(boundary)],
                                                                                      abs=1e-3)
    for name, curve in summary["curves"].items():
        assert curve[0]["train_seconds"] == 0 and curve[-1]["train_seconds"] > 0
        assert summary["elapsed_seconds"][name] == pytest.approx(
            [charge[name] + r["train_seconds"] + r["select_seconds"] for r in curve], abs=0.02)
    assert set(summary["wallclock_speedup"]) == METHODS - {"full"}
    best = summary["methods"]["full"]["best_step"]
    for name, w in summary["wallclock_speedup"].items():
        assert w["collect_seconds"] == pytest.approx(charge[name], abs=0.01)
        steps = [r["step"] for r in summary["curves"][name]]
        if w["steps_to_reach"] is not None:
            assert w["seconds_to_reach"] == summary["elapsed_seconds"][name][steps.index(w["steps_to_reach"])]
        if best == 0:  # the quick preset's usual case: full data is at its best before any training
            assert w["speedup"] is None and w["speedup_note"] == summary["speedup"][name]["speedup_note"]
        elif w["seconds_to_reach"] is not None:
            assert w["speedup"] == pytest.approx(w["baseline_seconds"] / w["seconds_to_reach"])


def test_kill_mid_stage_then_resume_matches_uninterrupted_run(quick_run, tmp_path):
    out = tmp_path / "killed"
    # quick: 2 stages x 3 steps, checkpoint every 2 steps; die after step 5 (stage 1), last checkpoint at step 4
    proc = run_demo(out, "methods=[cropi]", kill_at="train_step:5")
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert json.loads((out / "cropi" / "ckpt" / "latest.json").read_text())["step"] == 4
    assert not half_written(out)
    saved = final_checkpoint(out)
    proc = run_demo(out, "methods=[cropi]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_run(quick_run, out)
    # the seconds spent before the kill are the checkpoint's, not re-measured; the resume adds steps 4 and 5
    result = json.loads((out / "cropi" / "result.json").read_text())
    assert result["history"][:2] == saved["history"] and [r["step"] for r in saved["history"]] == [0, 3]
    assert result["train_seconds"] > saved["seconds"]["train"] > saved["history"][-1]["train_seconds"]
    assert result["select_seconds"] == pytest.approx(sum(s["stats"]["seconds"] for s in result["stages"]), abs=0.01)


def test_each_method_records_its_settings_and_a_rerun_with_others_is_refused(quick_run):
    cropi = json.loads((quick_run / "cropi" / "run_config.json").read_text())
    full = json.loads((quick_run / "full" / "run_config.json").read_text())
    assert (cropi["grpo.lr"], cropi["influence.k"], cropi["eval.k"], cropi["seed"]) == (2.0e-4, 1024, 2, 0)
    assert "influence.k" not in full and full["strategy"] == "full" and "threads" not in full
    proc = run_demo(quick_run, "methods=[full]", "grpo.lr=0.001")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "grpo.lr=0.0002" in last and "grpo.lr=0.001" in last and str(quick_run / "full") in last, last


def test_run_config_check_on_hand_built_directories(tmp_path):
    from cropi_verl.local.run_config import run_config, run_dir_problem, write_run_config

    cfg = _compose("influence.workers=7", "train.loggers=[file]")
    want = run_config(cfg, "random", 3)
    assert want["seed"] == 3 and "influence.workers" not in want and "train.loggers" not in want
    assert not any(k.startswith("influence.") for k in want)
    assert run_config(cfg, "cropi", 3)["influence.method"] == "sparse_jl"
    run = tmp_path / "random.seed3"
    assert run_dir_problem(run, want) is None  # nothing there yet
    (run / "ckpt").mkdir(parents=True)
    assert "no run_config.json" in run_dir_problem(run, want)
    write_run_config(run, want)
    assert run_dir_problem(run, want) is None
    assert run_dir_problem(run, run_config(_compose("threads=1", "repeats=3"), "random", 3)) is None  # execution-only
    problem = run_dir_problem(run, run_config(_compose("curriculum.steps_per_stage=20"), "random", 3))
    assert re.search(r"curriculum.steps_per_stage=10.*curriculum.steps_per_stage=20", problem), problem
    # a key added after the settings were recorded: no difference at its shipped default, one at another value
    cropi = run_config(cfg, "cropi", 3)
    old_run = tmp_path / "cropi.seed3"
    (old_run / "ckpt").mkdir(parents=True)
    write_run_config(old_run, {k: v for k, v in cropi.items() if k != "influence.grad_layers"})
    assert cropi["influence.grad_layers"] is None and run_dir_problem(old_run, cropi) is None
    changed = run_config(_compose("influence.workers=7", "train.loggers=[file]", "influence.grad_layers=1"), "cropi", 3)
    assert "influence.grad_layers='<unset>'" in run_dir_problem(old_run, changed)


@pytest.mark.slow  # the quick demo test checks the run draws curves.png; this redraws it from summary.json
def test_plot_script_redraws_a_run(quick_run):
    from scripts_helpers import run_script

    (quick_run / "curves.png").unlink()
    out = run_script("plot.py", str(quick_run))
    assert "curves.png" in out.stdout and (quick_run / "curves.png").stat().st_size > 10_000
    missing = run_script("plot.py", str(quick_run / "nowhere"), check=False)
    assert missing.returncode != 0 and "no summary" in missing.stderr


def _result(targeted: list[float], step: int = 5) -> dict:
    return {"history": [{"step": i * step, "targeted": t, "untargeted": 0.5, "val": {"val_add": t}}
                        for i, t in enumerate(targeted)], "stages": ["first"]}


def test_repeats_average_curves_and_keep_each_seed():
    from cropi_verl.local.main import mean_over_seeds, per_seed

    runs = {"full": [_result([0.1, 0.2, 0.3]), _result([0.1, 0.3, 0.2])],
            "cropi": [_result([0.1, 0.3, 0.3]), _result([0.1, 0.1, 0.2])],
            "random": [_result([0.1, 0.2, 0.2]), _result([0.1, 0.2, 0.25])]}
    mean = mean_over_seeds(runs["cropi"])
    assert [h["targeted"] for h in mean["history"]] == pytest.approx([0.1, 0.2, 0.25])
    assert mean["history"][2]["val"]["val_add"] == pytest.approx(0.25) and mean["stages"] == ["first"]
    ps = per_seed(runs, [0, 1], 0.5)
    # seed 0: full's best 0.3 at step 10, cropi reaches 0.3 at step 5 -> 2x; seed 1: full's best 0.3 at step 5,
    # cropi never reaches it. Half of full's gain (0.2): seed 0 full at 5, cropi at 5 -> 1x; seed 1: full at 5,
    # cropi at 10 -> 0.5x
    assert ps["cropi_speedup"] == [2.0, None]
    assert ps["cropi_speedup_at_gain"] == [1.0, 0.5]
    assert ps["cropi_minus_random_final"] == pytest.approx([0.1, -0.05])
    assert ps["methods"]["full"]["best_targeted"] == [0.3, 0.3]


def _timed(targeted: list[float], train: list[float], select: list[float]) -> dict:
    """A result with evals at steps 0, 5, 10 and the cumulative seconds at each (and FLOPs: 1e9 x the seconds); one
    stage, no influence scores."""
    return {"history": [{"step": 5 * i, "targeted": t, "untargeted": 0.5, "val": {}, "train_seconds": tr,
                         "select_seconds": se, "train_flops": tr * 1e9, "select_flops": se * 1e9}
                        for i, (t, tr, se) in enumerate(zip(targeted, train, select))],
            "stages": [{"selected_ids": [], "stats": {"seconds": select[-1]}}], "train_seconds": train[-1]}


def test_summary_wallclock_speedup_charges_each_method_its_costs(capsys):
    from omegaconf import OmegaConf

    from cropi_verl.eval.speedup import UNDEFINED
    from cropi_verl.local.main import print_table, summarize

    cfg = OmegaConf.create({"eval": {"speedup_gain_fraction": 0.9}, "curriculum": {"num_stages": 1}})
    collect = {"train": 3.0, "val_add": 1.0, "val_sub": 1.0}
    collect_flops = {k: v * 1e9 for k, v in collect.items()}
    # full: 2 s per step -> its best 0.3 at step 10, 20 s. All others reach 0.3 at step 5 (2x in steps), each at
    # 1 s per step: cropi 5 (collection, all splits) + 5 + 2 (its boundary) = 12 s; pass_rate 3 (the pool's) + 5 = 8 s;
    # random 5 s (no collection)
    results = {"full": _timed([0.1, 0.2, 0.3], [0, 10, 20], [0, 0, 0]),
               "cropi": _timed([0.1, 0.3, 0.3], [0, 5, 10], [0, 2, 2]),
               "pass_rate": _timed([0.1, 0.3, 0.3], [0, 5, 10], [0, 0, 0]),
               "random": _timed([0.1, 0.3, 0.3], [0, 5, 10], [0, 0, 0])}
    summary = summarize(cfg, results, collect, collect_flops)
    wall = summary["wallclock_speedup"]
    assert {m: (w["seconds_to_reach"], w["collect_seconds"]) for m, w in wall.items()} == {
        "cropi": (12.0, 5.0), "pass_rate": (8.0, 3.0), "random": (5.0, 0.0)}
    assert {m: w["speedup"] for m, w in wall.items()} == pytest.approx({"cropi": 20 / 12, "pass_rate": 2.5,
                                                                         "random": 4.0})
    assert summary["speedup"]["cropi"]["speedup"] == 2.0 and summary["elapsed_seconds"]["cropi"] == [5.0, 12.0, 17.0]
    compute = summary["compute_speedup"]  # the same charges in FLOPs (1e9 per second here)
    assert {m: (c["flops_to_reach"], c["collect_flops"]) for m, c in compute.items()} == {
        "cropi": (12e9, 5e9), "pass_rate": (8e9, 3e9), "random": (5e9, 0.0)}
    assert {m: c["speedup"] for m, c in compute.items()} == pytest.approx({m: w["speedup"] for m, w in wall.items()})
    # full's best at step 0: no speed-up (0/0), not 1.00x, in summary.json and in the table
    results["full"] = _timed([0.3, 0.2, 0.25], [0, 10, 20], [0, 0, 0])
    summary = summarize(cfg, results, collect, collect_flops)
    for key in ("speedup", "speedup_at_gain", "wallclock_speedup", "compute_speedup"):
        assert all(e["speedup"] is None and e["speedup_note"] == UNDEFINED for e in summary[key].values())
    print_table({"mean": 0.5, "by_family": {}, "zero_advantage_fraction": 0.0}, summary)
    lines = capsys.readouterr().out.splitlines()
    cropi = next(line for line in lines if line.startswith("cropi "))
    assert cropi.split()[-4:] == ["-", "-", "-", "-"] and "x" not in cropi
    assert f"  -: {UNDEFINED}" in lines


def test_bad_demo_keys_fail_in_one_line_before_any_work(tmp_path):
    proc = run_demo(tmp_path / "bad", "repeats=0", "eval.every=0")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: bad demo config: repeats=0: expected an integer >= 1; eval.every=0: expected an integer >= 1")
    assert not (tmp_path / "bad" / "data").exists()


def test_collection_flops_by_hand():
    """4 P per prompt and response token of every response: 2 P sampled, 2 P again for beta's log-probs."""
    import pandas as pd

    from cropi_verl.local.main import collection_flops

    frame = pd.DataFrame({"prompt_token_ids": [[1, 2, 3], [4]], "response_ids": [[[5, 6], [7]], [[8, 9, 10]]]})
    assert collection_flops(frame, params=10) == 4 * 10 * ((3 + 2) + (3 + 1) + (1 + 3))


def test_a_method_run_made_from_another_policy_or_other_rollouts_is_never_reused(tmp_path):
    """Same settings, other inputs (a policy warmed up to other bits, rollouts collected again): refused by content
    once the run knows them; the check before any work compares the settings alone (the inputs are made after it)."""
    from cropi_verl.local.run_config import run_dir_problem, with_inputs, write_run_config

    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "model.safetensors").write_bytes(b"weights a")
    run = tmp_path / "cropi"
    (run / "ckpt").mkdir(parents=True)
    settings = {"grpo.lr": 0.0002, "strategy": "cropi", "seed": 0}
    write_run_config(run, with_inputs(settings, tmp_path / "policy", {"train": "d1"}))
    assert run_dir_problem(run, settings) is None  # before the inputs exist: settings only
    assert run_dir_problem(run, with_inputs(settings, tmp_path / "policy", {"train": "d1"})) is None
    problem = run_dir_problem(run, with_inputs(settings, tmp_path / "policy", {"train": "d2"}))
    assert problem.startswith(f"{run}: its results were made with inputs=") and "rollouts.train': 'd1'" in problem
    (tmp_path / "policy" / "model.safetensors").write_bytes(b"weights b")
    assert "inputs=" in run_dir_problem(run, with_inputs(settings, tmp_path / "policy", {"train": "d1"}))


@pytest.mark.slow
def test_drift_check_reproduces_a_boundary_and_bounds_its_overlaps(quick_run):
    """``scripts/drift_check.py`` at the quick run's stage-1 weights (kept by the demo): its off-policy selection is
    the run's own there and its drift meter the one the run's pass recorded (recomputed independently, from the saved
    weights); every overlap is between 0 and the 15 selected."""
    from scripts_helpers import run_script

    out = run_script("drift_check.py", str(quick_run), "--stages", "1", "--seeds", "1", "2")
    rows = json.loads(out.stdout.strip().splitlines()[-1])["boundaries"]
    stage = json.loads((quick_run / "cropi" / "result.json").read_text())["stages"][1]
    assert [r["weights"] for r in rows] == ["stage 1"] and rows[0]["selected"] == 15 and rows[0]["off_vs_run"] == 15
    assert {k: rows[0][k] for k in stage["stats"]["drift"]} == pytest.approx(stage["stats"]["drift"], rel=1e-6)
    assert all(0 <= rows[0][k] <= 15 for k in ("off_on_seed_a", "off_on_seed_b", "on_on", "on_on_shared_val"))
    bad = run_script("drift_check.py", str(quick_run), "--stages", "7", check=False)
    assert bad.returncode == 2 and "no boundary weights for stages [7]" in bad.stderr
