"""The GPU recipe's own bash body (recipes/run_cropi_qwen1.5b.sh -> _cropi_common.sh), run for real on the local
raw fixtures up to the trainer launch: prepare_data (RAW_DIR), rollout collection with the HF backend standing in
for vLLM (ROLLOUT_BACKEND=hf) on a tiny random policy, preflight; CROPI_STOP_BEFORE_TRAIN=1 prints the launch
instead of running it. Every path that preflight and the launch read must have been written by the steps before."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys

from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from policy_helpers import saved_random_policy
from scripts_helpers import ROOT

STOP = "CROPI_STOP_BEFORE_TRAIN is set: not launching the trainer:"
POLICY_PROBLEMS = ("can be scored but cropi.fraction selects", "no prompt has a non-zero advantage")


def _recipe_env(tmp_path, policy, fixtures_dir, max_response: int = 4) -> dict:
    return dict(os.environ, MODEL=str(policy), NAME="tiny", MAX_RESPONSE=str(max_response), PYTHON=sys.executable,
                DATA_DIR=str(tmp_path / "data"), ROLLOUT_DIR=str(tmp_path / "rollouts"),
                RAW_DIR=str(fixtures_dir / "raw"), ROLLOUT_BACKEND="hf", VAL_PROMPTS="2", CROPI_STOP_BEFORE_TRAIN="1")


def _recipe(tmp_path, policy, fixtures_dir) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "recipes/run_cropi_qwen1.5b.sh", f"trainer.default_local_dir={tmp_path / 'ckpt'}"],
                          cwd=ROOT, env=_recipe_env(tmp_path, policy, fixtures_dir), capture_output=True, text=True,
                          timeout=300)


def _mixed_rewards(path) -> None:
    """Stand in for a policy that solves some samples: rewards 1, 0, 1, ... for every prompt, nothing flagged."""
    frame = pd.read_parquet(path)
    frame["reward"] = [[float(k % 2 == 0) for k in range(len(r))] for r in frame["reward"]]
    frame["flag"] = [[""] * len(f) for f in frame["flag"]]
    frame["pass_rate"] = [sum(r) / len(r) for r in frame["reward"]]
    frame.to_parquet(path)


def _launch_config(stdout: str):
    """The config the printed trainer launch would compose."""
    command = shlex.split(stdout.split(STOP, 1)[1].strip().splitlines()[0])
    assert command[1:3] == ["-m", "cropi_verl.trainer.main"]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        return compose(config_name="cropi_trainer", overrides=command[3:])


@pytest.mark.slow  # the default suite runs the recipe's config checks by dry runs; DEVICE=cpu runs it whole (-m slow)
def test_recipe_runs_on_local_fixtures_up_to_the_trainer_launch(tmp_path, fixtures_dir):
    policy = saved_random_policy(tmp_path / "policy")
    first = _recipe(tmp_path, policy, fixtures_dir)
    assert first.returncode in (0, 1), first.stderr[-3000:]
    problems = [line for line in first.stderr.splitlines() if line.startswith("  - ")]
    assert all(any(p in line for p in POLICY_PROBLEMS) for line in problems), problems  # a random policy's rewards only
    assert "data.train_files:" in first.stdout and "disk plan: checkpoints 2 kept" in first.stdout  # preflight ran
    held = [tmp_path / "rollouts" / name / "rollouts.parquet" for name in ("gsm8k_heldout", "math_heldout")]
    for path in [tmp_path / "rollouts" / "train" / "rollouts.parquet", *held]:
        _mixed_rewards(path)

    second = _recipe(tmp_path, policy, fixtures_dir)  # data and rollouts exist: only preflight runs, then stops
    assert second.returncode == 0, second.stderr[-3000:]
    assert "preflight: ok" in second.stdout and "prepare_data" not in second.stdout + second.stderr
    cfg = _launch_config(second.stdout)
    assert cfg.actor_rollout_ref.model.path == str(policy) and cfg.trainer.max_actor_ckpt_to_keep == 2
    assert dict(cfg.cropi.val_rollouts) == {"gsm8k_heldout": str(held[0]), "math_heldout": str(held[1])}
    data = tmp_path / "data"
    assert list(cfg.data.val_files) == [str(data / f"{n}.parquet") for n in
                                        ("gsm8k_test", "math500", "aime24", "amc23", "gaokao2023en", "olympiadbench")]
    read = [cfg.data.train_files, *cfg.data.val_files, cfg.cropi.train_rollouts, *cfg.cropi.val_rollouts.values(),
            cfg.actor_rollout_ref.model.path]
    assert [p for p in read if not os.path.exists(p)] == []


@pytest.mark.slow
def test_sigterm_to_the_recipe_stops_its_running_step_with_one_line(tmp_path, fixtures_dir):
    """A scheduler's SIGTERM goes to the recipe's bash, not to the step it runs: the step (here the collection) gets
    it at once, ends with its one line, and nothing of it keeps running."""
    policy = saved_random_policy(tmp_path / "policy")
    proc = subprocess.Popen(["bash", "recipes/run_cropi_qwen1.5b.sh"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            env=_recipe_env(tmp_path, policy, fixtures_dir, max_response=256))
    for line in proc.stderr:
        if "rollouts (hf)" in line:  # the collection's progress bar
            break
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=120)
    assert proc.returncode == 143, rest[-3000:]
    assert rest.strip().splitlines()[-1].startswith(
        f"interrupted by SIGTERM during collecting into {tmp_path / 'rollouts'}/train (finished shards are kept)")
    left = subprocess.run(["pgrep", "-f", str(tmp_path / "rollouts")], capture_output=True, text=True)
    assert left.stdout == "", left.stdout  # no step left running


# What `DEVICE=cpu` may change in the composed config, and nothing else: configs/device/cpu.yaml's keys, the GPU
# counts the recipe sets from NGPUS and TP, and what verl derives from them.
DEVICE_KEYS = {
    "trainer.device", "trainer.n_gpus_per_node", "actor_rollout_ref.rollout.n_gpus_per_node",
    "actor_rollout_ref.rollout.tensor_model_parallel_size", "actor_rollout_ref.rollout.name",
    "distillation.teacher_models.teacher_model.inference.name",  # verl: ${actor_rollout_ref.rollout.name}
    "actor_rollout_ref.actor.strategy", "actor_rollout_ref.ref.strategy",  # ref: ${actor_rollout_ref.actor.strategy}
    "actor_rollout_ref.model.use_remove_padding", "actor_rollout_ref.actor.use_remove_padding",
    "actor_rollout_ref.model.override_config.attn_implementation",
    "transfer_queue.backend.SimpleStorage.num_data_storage_units", "ray_kwargs.ray_init.num_cpus",
}
# The scale DEVICE=cpu chooses: its CPU_SCALE overrides (on the launch's command line), and the recipe variables it
# gives other defaults (MAX_PROMPT, MAX_RESPONSE -> lengths and token budgets), with what verl derives from them
CPU_SCALE = ["data.train_batch_size=8", "actor_rollout_ref.actor.ppo_mini_batch_size=8", "cropi.num_stages=2",
             "cropi.steps_per_stage=3", "trainer.save_freq=3", "trainer.test_freq=3"]
# (and the batch keys verl derives from CPU_SCALE's)
LENGTH_KEYS = {"data.max_prompt_length", "data.max_response_length", "actor_rollout_ref.rollout.prompt_length",
               "actor_rollout_ref.rollout.response_length", "actor_rollout_ref.actor.ppo_max_token_len_per_gpu",
               "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu",
               "actor_rollout_ref.ref.log_prob_max_token_len_per_gpu",
               "distillation.teacher_models.teacher_model.inference.prompt_length",  # verl: ${data.max_...}
               "distillation.teacher_models.teacher_model.inference.response_length",
               "critic.ppo_mini_batch_size"}  # verl: ${actor_rollout_ref.actor.ppo_mini_batch_size}
# Where the inputs and outputs are (DATA_DIR, ROLLOUT_DIR, MODEL, NAME)
PATH_KEYS = {"data.train_files", "data.val_files", "actor_rollout_ref.model.path", "cropi.train_rollouts",
             "cropi.val_rollouts.gsm8k_heldout", "cropi.val_rollouts.math_heldout", "trainer.experiment_name",
             "trainer.default_local_dir", "cropi.output_dir", "actor_rollout_ref.rollout.trace.experiment_name",
             "actor_rollout_ref.rollout.prometheus.served_model_name"}  # verl: ${trainer.experiment_name}, model path


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out |= _flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value}
    return out


def _dry_run_launch(tmp_path, env: dict, *overrides: str) -> tuple[list[str], dict]:
    """The trainer launch a dry run of the 1.5B recipe prints, and the config it composes (resolved, flat)."""
    res = subprocess.run(["bash", "recipes/run_cropi_qwen1.5b.sh", *overrides], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, DRY_RUN="1", PYTHON=sys.executable,
                                               CROPI_CACHE_DIR=str(tmp_path / "cache"), **env))
    assert res.returncode == 0, res.stderr[-3000:]
    command = shlex.split(res.stdout.split("# step 4/4 train")[1].strip().splitlines()[1])
    assert command[1:3] == ["-m", "cropi_verl.trainer.main"]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        return command, _flat(OmegaConf.to_container(compose(config_name="cropi_trainer", overrides=command[3:]),
                                                     resolve=True))


def _differing(a: dict, b: dict) -> set[str]:
    return {k for k in a.keys() | b.keys() if a.get(k, "<absent>") != b.get(k, "<absent>")}


def test_device_cpu_composes_the_gpu_recipes_own_config_but_for_the_device_keys(tmp_path):
    """DEVICE=cpu of the GPU recipe against the GPU recipe given the same paths and, on its command line, the scale
    DEVICE=cpu chooses: they differ exactly in ``DEVICE_KEYS``. The reward, the data sources, the checkpoint's
    contents and every ``cropi.*`` key are the GPU run's."""
    paths = dict(MODEL="/m", NAME="n", DATA_DIR="/d", ROLLOUT_DIR="/r")
    cpu_command, cpu = _dry_run_launch(tmp_path, dict(paths, DEVICE="cpu"))
    assert cpu_command[-len(CPU_SCALE):] == CPU_SCALE and cpu_command[3] == "+device=cpu"
    _, gpu = _dry_run_launch(tmp_path, dict(paths, MAX_PROMPT="128", MAX_RESPONSE="32"), *CPU_SCALE)
    assert _differing(gpu, cpu) == DEVICE_KEYS
    assert gpu["reward.custom_reward_function.path"] == "pkg://cropi_verl.rewards"
    # DEVICE=cpu alone (its own paths and scale) against the GPU recipe's defaults: devices, scale, paths only
    _, gpu_defaults = _dry_run_launch(tmp_path, {})
    _, cpu_defaults = _dry_run_launch(tmp_path, dict(DEVICE="cpu"))
    scale = {override.split("=")[0] for override in CPU_SCALE} | LENGTH_KEYS
    changed = _differing(gpu_defaults, cpu_defaults)
    assert changed - DEVICE_KEYS - scale - PATH_KEYS == set()
    for key in gpu_defaults:
        if key.startswith(("reward.", "cropi.", "actor_rollout_ref.actor.checkpoint.")) and key not in scale | PATH_KEYS:
            assert gpu_defaults[key] == cpu_defaults[key], key
    names = lambda files: [Path(f).name for f in files]  # noqa: E731 - the evaluation sets (data sources) match
    assert names(gpu_defaults["data.val_files"]) == names(cpu_defaults["data.val_files"])
