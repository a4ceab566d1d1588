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
from scripts_helpers import logged

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
    tok = AutoTokenizer.from_pretrained(ckpt / f"global_step_{latest_step(ckpt)}" / "actor" / "huggingface")
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


def latest_step(ckpt: Path) -> int:
    return int((ckpt / "latest_checkpointed_iteration.txt").read_text().strip())


def final_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(ckpt / f"global_step_{latest_step(ckpt)}" / "actor" / "huggingface" / "model.safetensors")


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


def test_the_recipe_runs_verls_trainer_end_to_end(out, tmp_path):
    """At 2 stages x 2 steps (the recipe's 3 x 3 runs in the slow tests): one stage swap, each boundary's pass with
    the replica asleep, each step's batch from its stage's subset."""
    ckpt = tmp_path / "ckpt"
    res = run_recipe(out, ckpt, "cropi.num_stages=2", "cropi.steps_per_stage=2", "trainer.save_freq=2",
                     "trainer.test_freq=2")
    assert res.returncode == 0, res.stderr[-3000:]
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "4"  # 2 stages x 2 steps
    states = stage_states(ckpt)
    assert [(s["stage"], s["start_step"]) for s in states] == [(0, 0), (1, 2)]
    steps = trained_samples(out, ckpt)
    assert sorted(steps) == list(range(1, 5))
    for step, samples in steps.items():
        ids = [i for i, _ in samples]
        assert len(ids) == 8 * 4  # data.train_batch_size prompts x rollout.n responses
        assert set(ids) <= set(states[(step - 1) // 2]["selected_ids"]), step  # the stage's subset, as verl saw it
    # the influence passes (the boundaries after steps 0 and 2) run while the replica holds no weights, with the
    # actor offloaded before and reloaded after by verl's worker group (events traced once its `to` calls returned)
    held, passes, order = True, [], []
    for event in read_trace(ckpt / "trace.jsonl"):
        if event["event"] == "replica_weights":
            held = event["held"]
            continue
        order.append((event["event"], event.get("phase"), event["step"]))
        if event["event"] == "influence_pass":
            passes.append((event["step"], event["phase"], held))
    assert passes == [(s, phase, False) for s in (0, 2) for phase in ("begin", "end")]
    assert order == [e for s in (0, 2) for e in [("actor_offload", None, s), ("influence_pass", "begin", s),
                                                 ("influence_pass", "end", s), ("actor_reload", None, s)]]
    assert logged(res.stdout, "cropi/failed_samples") == {step: 0.0 for step in range(1, 5)}  # every reward ran
    stages = logged(res.stdout, "cropi/stage")  # through verl's Tracking (console)
    assert stages == {1: 0.0, 2: 1.0}  # stage 0 at step 1; stage s at the step that ends stage s - 1
    assert set(logged(res.stdout, "timing_s/cropi_pool_gradients")) == {1, 2}


@pytest.mark.slow
def test_a_run_killed_mid_stage_1_resumes_to_the_same_weights(out, tmp_path):
    """...and keeps ``trainer.max_actor_ckpt_to_keep`` checkpoints after the resume too (verl forgets its earlier
    saves on a resume)."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert run_recipe(out, whole, "trainer.save_freq=1").returncode == 0
    died = run_recipe(out, killed, "trainer.save_freq=1", "trainer.max_actor_ckpt_to_keep=2",
                      env={"CROPI_KILL_AT": "checkpoint_saved:5"})
    assert died.returncode != 0 and (killed / "latest_checkpointed_iteration.txt").read_text().strip() == "5"
    kept = ["global_step_3", "global_step_4", "global_step_5"]  # killed after step 5's save, before its pruning
    assert sorted(p.name for p in killed.glob("global_step_*")) == kept
    res = run_recipe(out, killed, "trainer.save_freq=1", "trainer.max_actor_ckpt_to_keep=2")
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in killed.glob("global_step_*")) == ["global_step_8", "global_step_9"]
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


@pytest.mark.slow
def test_a_raising_reward_is_counted_at_every_step_and_in_validation(out, tmp_path):
    """verl's agent loop drops the samples whose reward raised and trains on (fewer than rollout.n of) the rest: the
    trainer counts them per step (``cropi/failed_samples``, a warning) and names a validation source left without a
    metric. Full data (verl's own dataloader) so that cropi_toy/mul prompts, whose reward raises, come up."""
    ckpt = tmp_path / "ckpt"
    res = run_recipe(out, ckpt, "cropi.strategy=full",
                     f"reward.custom_reward_function.path={ROOT / 'tests' / 'fixtures' / 'raising_reward.py'}")
    assert res.returncode == 0, res.stderr[-3000:]
    failed = logged(res.stdout, "cropi/failed_samples")
    assert sorted(failed) == list(range(1, 10)) and sum(failed.values()) > 0
    assert all(v % 4 == 0 for v in failed.values())  # whole groups (rollout.n = 4): every session of a mul prompt
    warnings = re.findall(r"step (\d+): verl dropped (\d+) of 32 samples", res.stdout + res.stderr)
    assert {int(step): float(n) for step, n in warnings} == {s: v for s, v in failed.items() if v}
    assert logged(res.stdout, "cropi/val_sources_missing") == {0: 1.0, 3: 1.0, 6: 1.0, 9: 1.0}
    assert "validation: no metric for data sources ['cropi_toy/mul']" in res.stdout + res.stderr


@pytest.mark.slow
def test_a_rerun_from_other_weights_selects_its_stages_anew(out, tmp_path):
    """``trainer.resume_mode=disable`` into a directory that holds a finished run: stage 0 (at the same initial model)
    is reused, stages 1 and 2 were selected at the old run's checkpoints and are selected again at the new ones."""
    ckpt = tmp_path / "ckpt"
    assert run_recipe(out, ckpt).returncode == 0
    first = [json.loads((ckpt / "cropi" / f"stage_{s:03d}" / "source.json").read_text()) for s in range(3)]
    res = run_recipe(out, ckpt, "trainer.resume_mode=disable")
    assert res.returncode == 0, res.stderr[-3000:]
    anew = re.findall(r"cropi/stage_(\d+) was computed at other weights", res.stdout + res.stderr)
    assert sorted(set(anew)) == ["001", "002"]
    second = [json.loads((ckpt / "cropi" / f"stage_{s:03d}" / "source.json").read_text()) for s in range(3)]
    assert second[0] == first[0] and second[1] != first[1] and second[2] != first[2]
    for stage, step in ((1, 3), (2, 6)):  # each now names the checkpoint the new run saved there
        saved = json.loads((ckpt / f"global_step_{step}" / "cropi_checkpoint.json").read_text())
        assert second[stage] == {"step": step, "checkpoint_id": saved["id"]}


@pytest.mark.slow
def test_the_gpu_recipe_runs_on_the_cpu_end_to_end_and_its_rerun_resumes(tmp_path):
    """``DEVICE=cpu bash recipes/run_cropi_qwen1.5b.sh`` (the GPU recipe's config but its device keys: KL loss and a
    reference policy, dynamic batch sizes, 8 dataloader / agent-loop / reward workers, the reward of every source),
    2 stages of 2 steps, every step for real: raw datasets made from the embedded task, prepare_data, the hf
    collection, preflight, verl's trainer. Every stage selects (stage 1 from candidates, the recipe's default), no
    reward failed, every evaluation set has a validation metric (and the first validation is not the 0.0 of a failing
    verifier), and the rerun resumes."""
    import time

    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    cmd = ["bash", "recipes/run_cropi_qwen1.5b.sh", f"trainer.default_local_dir={ckpt}", "cropi.steps_per_stage=2",
           "trainer.save_freq=2", "trainer.test_freq=2"]
    env = dict(os.environ, DEVICE="cpu", OUT=str(out), PYTHON=sys.executable)
    t0 = time.time()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    print(f"first run: {time.time() - t0:.0f} s")
    text = res.stdout + res.stderr
    assert res.returncode == 0, text[-3000:]
    assert "Traceback" not in text and "killed by signal" not in text, text[-3000:]
    assert latest_step(ckpt) == 4
    for state in stage_states(ckpt):  # every stage selected by an influence pass, at the weights it started from
        assert state["selected_ids"] and state["score_file"] and state["stats"]["n_pool"] > len(state["selected_ids"])
    assert [s["start_step"] for s in stage_states(ckpt)] == [0, 2]
    s0, s1 = stage_states(ckpt)  # the recipe's rescore=candidates: stage 1 scores candidates, never zero-advantage
    assert s1["settings"]["rescore"] == "candidates" and s1["stats"]["n_pool"] == s0["stats"]["n_pool"]
    assert 0 < s1["stats"]["n_gradients"] <= s0["stats"]["n_gradients"] < s0["stats"]["n_pool"]
    assert s1["stats"]["n_zero_advantage"] == s0["stats"]["n_zero_advantage"]
    assert logged(res.stdout, "cropi/failed_samples") == {1: 0.0, 2: 0.0, 3: 0.0, 4: 0.0}
    sources = ("gsm8k", "math500", "aime24", "amc23", "gaokao2023en", "olympiadbench")
    for source in sources:
        assert set(logged(res.stdout, f"val-core/{source}/acc/mean@1")) == {0, 2, 4}, source
    first = [logged(res.stdout, f"val-core/{source}/acc/mean@1")[0] for source in sources]
    assert sum(first) > 0  # math-verify ran: verl's pooled scorer timed out to 0.0 on every set here
    t0 = time.time()
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    print(f"rerun: {time.time() - t0:.0f} s")
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert f"Resuming from {ckpt}/global_step_4" in again.stdout + again.stderr
    assert "# step 1/4 prepare the data: skipped" in again.stdout and latest_step(ckpt) == 4
