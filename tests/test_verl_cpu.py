"""verl's real trainer on the CPU: ``recipes/run_cropi_tiny_verl_cpu.sh`` runs ``python -m cropi_verl.trainer.main``
with verl's FSDP2 actor, agent loop, reward manager, validation, ``hf_model`` checkpoints, ``StatefulDataLoader``,
the influence worker group and the stage swap; the rollout is the ``hf`` replica (cropi_verl/verl_cpu), which frees
its weights on ``sleep`` as vLLM does. Nothing here stands in for a verl part.

What verl trained on is read from verl's own dumps (``trainer.rollout_data_dir``: the decoded prompts of every
step), when replicas held weights from the replica server's trace (``CROPI_TRACE``), and the weights from the
``hf_model`` checkpoints.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from cropi_verl.utils.trace import read_trace

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "run_cropi_tiny_verl_cpu.sh"


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    """One data/rollouts folder for every run of the module (the recipe reuses them); checkpoints per run."""
    return tmp_path_factory.mktemp("verl_cpu")


def initial_weights(out: Path) -> dict[str, torch.Tensor]:
    """The tiny policy the recipe starts from (``cropi_verl.verl_cpu.prepare`` prints its folder; cached)."""
    res = subprocess.run([sys.executable, "-m", "cropi_verl.verl_cpu.prepare", f"output_dir={out}", "preset=quick"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600, check=True)
    return load_file(Path(res.stdout.strip().splitlines()[-1]) / "model.safetensors")


def run_recipe(out: Path, ckpt: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = ["bash", str(RECIPE), f"trainer.default_local_dir={ckpt}", f"trainer.rollout_data_dir={ckpt}/dump", *overrides]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, OUT=str(out), CROPI_TRACE=str(ckpt / "trace.jsonl"), **(env or {})))


def trained_samples(out: Path, ckpt: Path) -> dict[int, list[tuple[int, str]]]:
    """step -> the (prompt id, response) pairs verl generated and trained on at that step, sorted (from its rollout
    dumps, which verl orders by random uids)."""
    tok = AutoTokenizer.from_pretrained(ckpt / "global_step_3" / "actor" / "huggingface")
    train = pd.read_parquet(out / "data" / "train.parquet")
    by_text = {}
    for prompt, extra in zip(train["prompt"], train["extra_info"]):
        ids = tok.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=True)["input_ids"]
        by_text[tok.decode(ids, skip_special_tokens=True)] = int(extra["index"])
    steps = {}
    for dump in (ckpt / "dump").glob("*.jsonl"):
        rows = [json.loads(line) for line in dump.read_text().splitlines()]
        steps[int(dump.stem)] = sorted((by_text[r["input"]], r["output"]) for r in rows)
    return steps


def stage_states(ckpt: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((ckpt / "cropi").glob("stage_*/state.json"))]


def final_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    step = (ckpt / "latest_checkpointed_iteration.txt").read_text().strip()
    return load_file(ckpt / f"global_step_{step}" / "actor" / "huggingface" / "model.safetensors")


def weight_gap(a: dict, b: dict, start: dict) -> float:
    """||a - b|| / ||a - start|| over all parameters: two runs' difference as a share of the run's whole update."""
    norm = lambda x, y: torch.sqrt(sum(((x[k] - y[k]) ** 2).sum() for k in x))  # noqa: E731
    return float(norm(a, b) / norm(a, start))


# Two fresh runs with the same seed and identical rollouts end 0.015-0.025 apart (weight_gap, 9 steps, measured on
# this CPU path): verl's uids are uuid4s, so a batch's row order, hence the fp32 summation order of the loss, differs
# from run to run, and Adam turns those last-bit differences into lr-sized steps on coordinates whose gradient is
# ~0 (e.g. the key biases). One training step moves the weights by 0.10-0.24 of the whole run. 0.05 is above the
# noise and below half a step: a skipped or repeated step, or another subset, fails.
SAME_RUN_GAP = 0.05


def logged(stdout: str, key: str) -> dict[int, float]:
    """step -> the value verl's console logger printed for ``key``."""
    out = {}
    for line in stdout.splitlines():
        step, value = re.search(r"step:(\d+) - ", line), re.search(rf"(?:^| - ){re.escape(key)}:([-\d.e]+)", line)
        if step and value:
            out[int(step.group(1))] = float(value.group(1))
    return out


def test_the_recipe_runs_verls_trainer_end_to_end(out, tmp_path):
    ckpt = tmp_path / "ckpt"
    res = run_recipe(out, ckpt)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "9"  # 3 stages x 3 steps
    states = stage_states(ckpt)
    assert [(s["stage"], s["start_step"]) for s in states] == [(0, 0), (1, 3), (2, 6)]
    steps = trained_samples(out, ckpt)
    assert sorted(steps) == list(range(1, 10))
    for step, samples in steps.items():
        ids = [i for i, _ in samples]
        assert len(ids) == 8 * 4  # data.train_batch_size prompts x rollout.n responses
        assert set(ids) <= set(states[(step - 1) // 3]["selected_ids"]), step  # the stage's subset, as verl saw it
    # the influence passes (the boundaries after steps 0, 3, 6) run while the replica holds no weights
    held, passes = True, []
    for event in read_trace(ckpt / "trace.jsonl"):
        if event["event"] == "replica_weights":
            held = event["held"]
        else:
            passes.append((event["step"], event["phase"], held))
    assert passes == [(s, phase, False) for s in (0, 3, 6) for phase in ("begin", "end")]
    stages = logged(res.stdout, "cropi/stage")  # through verl's Tracking (console)
    assert stages == {1: 0.0, 3: 1.0, 6: 2.0}  # stage 0 at step 1; stage s at the step that ends stage s - 1
    assert set(logged(res.stdout, "timing_s/cropi_pool_gradients")) == {1, 3, 6}


@pytest.mark.slow
def test_a_run_killed_mid_stage_1_resumes_to_the_same_weights(out, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert run_recipe(out, whole, "trainer.save_freq=1").returncode == 0
    died = run_recipe(out, killed, "trainer.save_freq=1", env={"CROPI_KILL_AT": "checkpoint_saved:5"})
    assert died.returncode != 0 and (killed / "latest_checkpointed_iteration.txt").read_text().strip() == "5"
    res = run_recipe(out, killed, "trainer.save_freq=1")
    assert res.returncode == 0, res.stderr[-3000:]
    for a, b in zip(stage_states(whole), stage_states(killed), strict=True):
        assert {k: a[k] for k in ("stage", "start_step", "selected_ids")} == {k: b[k] for k in ("stage", "start_step", "selected_ids")}
    resumed = trained_samples(out, killed)
    assert 5 not in resumed  # killed after step 5's checkpoint, before verl dumped its batch
    assert resumed == {s: pairs for s, pairs in trained_samples(out, whole).items() if s != 5}  # same rollouts
    assert weight_gap(final_weights(whole), final_weights(killed), initial_weights(out)) < SAME_RUN_GAP


@pytest.mark.slow
def test_sigterm_ends_the_trainer_with_one_line_and_the_rerun_resumes(out, tmp_path):
    """SIGTERM to ``python -m cropi_verl.trainer.main`` (the recipe ``exec``s it) once verl saved a checkpoint,
    while the task runner trains inside verl's ``ray.get``: one line, exit status 143, no Ray crash report, and the
    same command goes on from that checkpoint to the end."""
    ckpt = tmp_path / "ckpt"
    cmd = ["bash", str(RECIPE), f"trainer.default_local_dir={ckpt}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OUT=str(out)))
    tracker = ckpt / "latest_checkpointed_iteration.txt"
    for line in proc.stderr:  # verl logs "Saving checkpoint to ..." before it writes the tracker
        if tracker.exists():
            break
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=120)
    assert proc.returncode == 143, rest[-3000:]
    assert "SIGTERM received" not in rest and "Traceback" not in rest, rest[-3000:]
    saved = tracker.read_text().strip()
    assert rest.strip().splitlines()[-1] == (
        f"interrupted by SIGTERM during verl's training (latest checkpoint: {ckpt}/global_step_{saved}); finished: "
        "the config and rollouts checks; rerun the same command to resume")
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=dict(os.environ, OUT=str(out)))
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"Resuming from {ckpt}/global_step_{saved}" in res.stdout + res.stderr
    assert tracker.read_text().strip() == "9"


@pytest.mark.slow
def test_full_data_is_plain_verl_grpo(out, tmp_path):
    """``cropi.strategy=full`` against ``python -m verl.trainer.main_ppo`` (verl's own task runner and trainer, no
    CROPI code) with the same composed settings and seed."""
    ours = tmp_path / "ours"
    res = run_recipe(out, ours, "cropi.strategy=full")
    assert res.returncode == 0, res.stderr[-3000:]
    plain = tmp_path / "plain"
    ref = run_recipe(out, plain, "trainer.total_training_steps=9", env={"VERL_MAIN": "verl.trainer.main_ppo"})
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert trained_samples(out, ours) == trained_samples(out, plain)  # the same batches and responses
    n_train = len(pd.read_parquet(out / "data" / "train.parquet"))  # full data: the dataset, not the rollouts' pool
    assert logged(res.stdout, "cropi/n_selected") == {step: n_train for step in (1, 3, 6)}
    assert weight_gap(final_weights(ours), final_weights(plain), initial_weights(out)) < SAME_RUN_GAP
