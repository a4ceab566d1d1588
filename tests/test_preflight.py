"""scripts/preflight.py: a good run passes with a summary; a bad one lists every problem at once."""

from __future__ import annotations

from dataclasses import replace

import torch

from cropi_verl.data.toy_task import build_toy_task
from cropi_verl.data.verl_format import row_ids
from influence_helpers import make_prompts, rollout_table
from policy_helpers import TASK, saved_random_policy, toy_prompts
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


def _preflight_module():
    import importlib.util

    from scripts_helpers import ROOT

    spec = importlib.util.spec_from_file_location("preflight_script", ROOT / "scripts" / "preflight.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_disk_plan_arithmetic_against_a_hand_count(tmp_path):
    from omegaconf import OmegaConf

    def qwen2_params(vocab, h, mlp, layers, kv):  # tied embeddings
        per_layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * mlp + 2 * h  # q, k, v (biases), o, MLP, norms
        return vocab * h + layers * per_layer + h  # embedding (= LM head), layers, final norm

    pf = _preflight_module()
    params, dtype = pf.model_size(str(saved_random_policy(tmp_path / "policy")))
    assert params == qwen2_params(399, 32, 64, 1, 2 * 8) == 22_144  # the tiny policy: 2 KV heads of 8
    assert dtype == torch.float32 and pf.checkpoint_bytes(params, dtype) == 22_144 * (4 + 8 + 4)
    qwen_1_5b = qwen2_params(151_936, 1536, 8960, 28, 2 * 128)
    assert qwen_1_5b == 1_543_714_304  # Qwen2.5-1.5B; a bf16 hf_model: 14 B per parameter, ~20.1 GiB a checkpoint
    assert pf.checkpoint_bytes(qwen_1_5b, torch.bfloat16) == 21_612_000_256

    def kept(**trainer):
        return pf.checkpoints_kept(OmegaConf.create({"cropi": {"num_stages": 10, "steps_per_stage": 100},
                                                     "trainer": trainer}))
    assert kept(save_freq=50, max_actor_ckpt_to_keep=None) == 20 and kept(save_freq=50, max_actor_ckpt_to_keep=2) == 2
    assert kept(save_freq=-1, max_actor_ckpt_to_keep=None) == 0


def test_an_unreadable_model_config_is_one_line_of_the_plan(tmp_path):
    train = _setup(tmp_path)
    out = run_script("preflight.py", *_args(tmp_path, train, f"actor_rollout_ref.model.path={tmp_path / 'absent'}"))
    assert f"disk plan: cannot read the config of {tmp_path / 'absent'}" in out.stdout and "preflight: ok" in out.stdout
    assert "disk plan: feature stores" in out.stdout
