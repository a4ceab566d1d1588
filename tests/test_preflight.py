"""scripts/preflight.py: a good run passes with a summary; a bad one lists every problem at once; it counts the
responses and prompts that scoring drops with scoring's own code; a file that is not a rollouts file stops it in
one line."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pandas as pd
import torch
from transformers import AutoTokenizer

from cropi_verl.data.toy_task import build_toy_task
from cropi_verl.data.verl_format import row_ids
from influence_helpers import make_prompts, rollout_table, unflagged_table, with_response
from policy_helpers import TASK, saved_random_policy, toy_prompts
from scripts_helpers import run_script


def _pool(**kw):
    """``make_prompts`` with the ids of the toy training file (60 prompts of 4 responses)."""
    ids = row_ids(build_toy_task(TASK)["train"])
    return [replace(p, prompt_id=i) for p, i in zip(make_prompts(len(ids), **kw), ids)]


def _setup(tmp_path):
    train = toy_prompts(tmp_path / "train.parquet")
    rollout_table(_pool(zero_every=2)).to_parquet(tmp_path / "train_rollouts.parquet")
    rollout_table(make_prompts(5, seed=3)).to_parquet(tmp_path / "val_rollouts.parquet")
    return train


def _args(tmp_path, train, *extra):
    """A run on the toy files: a model path that is a hub id (its config is read where it is downloaded) and a batch
    that the pool's 10% fills (6 of 60)."""
    return (f"data.train_files={train}", f"data.val_files={train}",
            f"cropi.train_rollouts={tmp_path / 'train_rollouts.parquet'}",
            f"cropi.val_rollouts={{v:{tmp_path / 'val_rollouts.parquet'}}}", f"cropi.output_dir={tmp_path / 'out'}",
            "trainer.save_freq=10", "cropi.steps_per_stage=20", "actor_rollout_ref.model.path=org/not-downloaded",
            "data.train_batch_size=4", *extra)


def test_good_run_passes_with_a_summary(tmp_path):
    train = _setup(tmp_path)
    out = run_script("preflight.py", *_args(tmp_path, train))  # the shipped cropi.rescore=candidates
    assert "preflight: ok" in out.stdout
    assert "60 prompts, covering 60/60 of the training file" in out.stdout
    assert "zero-advantage 30 (50%) -> 30 can be scored" in out.stdout
    # 18 of the previous top 30% and 10% of the other 12 scorable: (18 + 1.2) / 30
    assert ("cropi.rescore=candidates: the passes after stage 0 compute about 19 of the 30 scorable prompts' "
            "gradients (64%)") in out.stdout
    assert "cropi.val_rollouts.v: 5 prompts, 5 usable" in out.stdout
    assert ("reward: pkg://cropi_verl.rewards:compute_score scores 1 / 0 on every data source (cropi_toy/add, "
            "cropi_toy/max, cropi_toy/mul, cropi_toy/rev, cropi_toy/sub), right answers boxed and in words") in out.stdout
    # beta's pass rate and zero-advantage share per data source and tier, by hand from the two files
    roll = pd.read_parquet(tmp_path / "train_rollouts.parquet")
    tier = {int(i): e["tier"] for i, e in zip(row_ids(pd.read_parquet(train)), pd.read_parquet(train)["extra_info"])}
    cells = {}
    for pid, rewards in zip(roll["prompt_id"], roll["reward"]):
        cells.setdefault(str(tier[int(pid)]), []).append((sum(rewards) / len(rewards), len(set(rewards)) == 1))
    want = "; ".join(f"{t} {sum(p for p, _ in v) / len(v):.2f}, {sum(z for _, z in v) / len(v):.0%}, {len(v)}"
                     for t, v in sorted(cells.items()))
    assert f"cropi.train_rollouts by tier (pass rate, zero-advantage share, prompts): {want}" in out.stdout
    assert "cropi.train_rollouts by data_source (pass rate, zero-advantage share, prompts): cropi_toy/add 0." \
        in out.stdout


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


def test_unflagged_empty_responses_are_excluded_as_scoring_excludes_them(tmp_path):
    """Empty responses ([] or the tokenizer's EOS alone) with their rewards kept and no flag: excluded, and the
    group statistics recomputed without them, so prompt 5, which loses its only 0 reward, turns zero-advantage."""
    train = _setup(tmp_path)
    policy = saved_random_policy(tmp_path / "policy")
    eos = AutoTokenizer.from_pretrained(policy).eos_token_id
    pool = _pool(zero_every=2)
    pool[1], pool[3] = with_response(pool[1], 1, tokens=[]), with_response(pool[3], 1, tokens=[eos])
    pool[5] = with_response(replace(pool[5], rewards=[0.0, 1.0, 1.0, 1.0]), 0, tokens=[])
    unflagged_table(pool).to_parquet(tmp_path / "train_rollouts.parquet")
    out = run_script("preflight.py", *_args(tmp_path, train, f"actor_rollout_ref.model.path={policy}",
                                            "data.max_prompt_length=64", "data.max_response_length=32"))
    # 4 excluded: the 3 made here and response 3 of prompt 28, which make_prompts drew as [2], the EOS alone
    assert "zero-advantage 31 (52%) -> 29 can be scored; 4 responses excluded (empty or non-finite reward)" in (
        out.stdout)
    assert "preflight: ok" in out.stdout


def test_a_pool_without_a_finite_reward_cannot_be_scored(tmp_path):
    train = _setup(tmp_path)
    nan = [replace(p, rewards=[math.nan] * 4) for p in _pool()]
    unflagged_table(nan).to_parquet(tmp_path / "train_rollouts.parquet")
    out = run_script("preflight.py", *_args(tmp_path, train), check=False)
    assert out.returncode == 1
    assert "zero-advantage 60 (100%) -> 0 can be scored; 240 responses excluded" in out.stdout
    assert "only 0 prompts can be scored but cropi.fraction selects 6" in out.stderr


def test_a_prompts_file_given_as_rollouts_stops_it_in_one_line(tmp_path):
    train = _setup(tmp_path)
    out = run_script("preflight.py", *_args(tmp_path, train, f"cropi.train_rollouts={train}"), check=False)
    assert out.returncode == 2 and out.stdout == ""
    (line,) = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: {train}: file: columns: missing prompt_id, ")


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
    """A hub id not downloaded here (the GPU machine fetches it); a local path that is no model is a problem
    (``test_what_the_real_run_would_fail_on_late_is_refused_by_preflight``)."""
    train = _setup(tmp_path)
    out = run_script("preflight.py", *_args(tmp_path, train))
    assert "disk plan: cannot read the config of org/not-downloaded" in out.stdout and "preflight: ok" in out.stdout
    assert "disk plan: feature stores" in out.stdout
    assert "memory plan: skipped, cannot read the config of org/not-downloaded" in out.stdout


def test_the_memory_plan_is_printed_after_the_disk_plan(tmp_path):
    train = _setup(tmp_path)
    policy = saved_random_policy(tmp_path / "policy")
    out = run_script("preflight.py", *_args(tmp_path, train, f"actor_rollout_ref.model.path={policy}",
                                            "data.max_prompt_length=64", "data.max_response_length=32"))
    lines = out.stdout.splitlines()
    start = lines.index("memory plan per GPU (22,144 parameters), at a boundary:")  # the tiny policy's meta count
    assert start > max(i for i, line in enumerate(lines) if line.startswith("disk plan:"))
    assert [line.split()[0] for line in lines[start + 1 : start + 5]] == ["actor", "rollout", "influence", "total"]
    assert "of 80.0 GiB" in lines[start + 4] and "fits (margin 10%)" in lines[start + 5]
    assert "influence workers: bfloat16 on GPUs, gradient checkpointing off (auto: the plan fits (" in out.stdout
    assert "preflight: ok" in out.stdout


def test_a_plan_that_cannot_fit_is_refused(tmp_path):
    train = _setup(tmp_path)
    policy = saved_random_policy(tmp_path / "policy")
    out = run_script("preflight.py", *_args(tmp_path, train, f"actor_rollout_ref.model.path={policy}",
                                            "cropi.gpu_memory_gb=0.001"), check=False)
    assert out.returncode == 1 and "preflight: 1 problem(s)" in out.stderr
    (line,) = [line for line in out.stderr.splitlines() if line.startswith("  - ")]
    assert line.startswith("  - memory plan: does not fit cropi.gpu_memory_gb=0.001: at a boundary actor 0.0 ")
    for part in ("influence worker", "largest component: influence worker", "the actor's training peak",
                 "lower actor_rollout_ref.actor.ppo_max_token_len_per_gpu", "cropi.popi.micro_batch_tokens"):
        assert part in line, part
    assert "DOES NOT FIT" in out.stdout
    assert "gradient checkpointing on (auto: the plan needs it (" in out.stdout  # it does not fit without it either


def test_rollouts_with_log_probs_of_another_dtype_are_refused(tmp_path):
    """The collection's manifest records the dtype beta's log-probs were recomputed in; the workers' (auto:
    bfloat16 with GPU workers) must be the same, else rho != 1 at beta's weights."""
    train = _setup(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"config": {"logprob_dtype": "float32"}}))  # beside both files
    out = run_script("preflight.py", *_args(tmp_path, train), check=False)
    assert out.returncode == 1 and "preflight: 2 problem(s)" in out.stderr
    for label in ("cropi.train_rollouts", "cropi.val_rollouts.v"):
        assert (f"{label}: beta's log-probs were recomputed in float32 ({tmp_path / 'manifest.json'}) but "
                "cropi.workers.dtype resolves to bfloat16") in out.stderr, label
    assert "--logprob-dtype bfloat16" in out.stderr
    ok = run_script("preflight.py", *_args(tmp_path, train, "cropi.workers.use_gpu=false"))  # CPU workers: float32
    assert "preflight: ok" in ok.stdout


def test_an_unknown_strategy_is_listed_with_the_other_problems(tmp_path):
    """A mistyped strategy is checked as cropi (the default), so a missing rollouts file shows too; a truncated
    data file is one problem naming it."""
    train = _setup(tmp_path)
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(train.read_bytes()[:3000])
    out = run_script("preflight.py", *_args(tmp_path, train, "cropi.strategy=cropy",
                                            f"cropi.train_rollouts={tmp_path / 'none.parquet'}",
                                            f"data.val_files={truncated}"), check=False)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    problems = [line for line in out.stderr.splitlines() if line.startswith("  - ")]
    assert problems[0].startswith("  - cropi.strategy='cropy': expected one of cropi, ")
    assert f"  - cropi.train_rollouts={tmp_path / 'none.parquet'}: no such file" in problems
    assert (f"  - data.val_files: {truncated}: not a readable parquet file (truncated or corrupt?): Parquet magic "
            "bytes not found in footer. Either the file is corrupted or this is not a parquet file.") in problems
    assert len(problems) == 3


def test_a_mistyped_override_is_one_line():
    out = run_script("preflight.py", "cropi.fractoin=0.2", check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("error: bad override cropi.fractoin: cropi has unknown keys ['fractoin']: expected "
                           "['train_rollouts', 'val_rollouts', ")  # no advice to add it with "+"
    assert line.endswith("'workers']  (CROPI_DEBUG=1 shows the traceback)")


def test_a_misconfigured_reward_nodes_model_lengths_and_batch_are_refused_at_once(tmp_path):
    """verl's default reward (``reward.custom_reward_function.path=null``) raises for the embedded task's sources and
    scores ``aime24`` -1 for a wrong answer and for a right one in words (math_dapo): both named with their file. Several nodes need an absolute, shared
    ``trainer.default_local_dir``. (The shipped config, ``pkg://cropi_verl.rewards``, scores every source 1 / 0:
    ``test_good_run_passes_with_a_summary``.)"""
    train = _setup(tmp_path)
    val = pd.read_parquet(train).iloc[:3].assign(data_source=["aime24", "gsm8k", "math500"])
    val.to_parquet(tmp_path / "val.parquet")
    args = list(_args(tmp_path, train))
    args[1] = f"data.val_files={tmp_path / 'val.parquet'}"
    (tmp_path / "manifest.json").write_text(json.dumps({"config": {"model": "/models/another"}}))
    bad = run_script("preflight.py", *args, "reward.custom_reward_function.path=null", "trainer.nnodes=2",
                     "trainer.default_local_dir=ckpt/run", f"actor_rollout_ref.model.path={tmp_path / 'none'}",
                     "data.max_response_length=0", "data.train_batch_size=16", "cropi.val_sets=v", check=False)
    assert bad.returncode == 1
    # what the real run would fail on late: a model directory that does not exist, rollouts collected from another
    # model (their manifest.json), no response tokens, a selection smaller than one batch, a scoring set as a string
    for part in (f"actor_rollout_ref.model.path={tmp_path / 'none'}: no model directory there (no config.json)",
                 "cropi.train_rollouts: collected from /models/another", "must come from the initial policy (beta)",
                 "data.max_response_length=0: expected an integer >= 1",
                 "cropi.fraction=0.1 selects 6 of the 60 pool prompts, fewer than one batch (data.train_batch_size=16)",
                 "cropi.val_sets='v': expected a list of names of cropi.val_rollouts, e.g. cropi.val_sets=[v]"):
        assert part in bad.stderr, part
    assert (f"data_source 'aime24' ({tmp_path / 'val.parquet'}): the reward (verl's default_compute_score) scores a "
            "right answer in words -1.0, a wrong answer -1.0, expected 1.0 for a right answer (boxed or in words) and "
            "0.0 for a wrong one") in bad.stderr
    assert (f"data_source 'cropi_toy/add' ({train}): the reward (verl's default_compute_score) raised "
            "NotImplementedError") in bad.stderr
    assert f"data_source 'gsm8k' ({tmp_path / 'val.parquet'}): the reward (verl's default_compute_score) raised" \
        in bad.stderr  # verl knows GSM8K as openai/gsm8k only
    assert "trainer.default_local_dir=ckpt/run: with trainer.nnodes=2 it must be an absolute path" in bad.stderr


def test_grad_layers_beyond_the_models_blocks_is_listed(tmp_path):
    """cropi.popi.grad_layers is checked against a local model's decoder blocks (null or 1 .. L) before any work."""
    from policy_helpers import saved_random_policy

    train = _setup(tmp_path)
    policy = saved_random_policy(tmp_path / "policy")
    layers = json.loads((policy / "config.json").read_text())["num_hidden_layers"]
    out = run_script("preflight.py", *_args(tmp_path, train, f"actor_rollout_ref.model.path={policy}",
                                            f"cropi.popi.grad_layers={layers + 1}"), check=False)
    assert out.returncode == 1
    assert (f"cropi.popi.grad_layers={layers + 1}: expected null or 1 .. {layers} (the model's decoder blocks)"
            in out.stderr)


def test_the_selection_levers_line_by_hand(tmp_path):
    """The lever line reads K and the adaptive draw from the train rollouts' manifest.json and gives the last-block
    gradient's FLOP factor, (2 P + (4 + 2c) d) / ((6 + 2c) P), d counted here on the loaded model's last block, final
    norm and head."""
    from transformers import AutoModelForCausalLM

    train = _setup(tmp_path)
    policy = saved_random_policy(tmp_path / "policy")
    adaptive = {"first": 2, "stopped_prompts": 30, "prompts": 60, "responses": 180, "responses_at_n": 240}
    (tmp_path / "manifest.json").write_text(json.dumps({"config": {"n": 4, "logprob_dtype": "bfloat16"},
                                                                 "adaptive": adaptive}))
    out = run_script("preflight.py", *_args(tmp_path, train, f"actor_rollout_ref.model.path={policy}",
                                            "cropi.popi.grad_layers=1", "cropi.num_stages=3"))
    model = AutoModelForCausalLM.from_pretrained(policy)
    every = sum(p.numel() for p in model.parameters())
    kept = {id(p): p.numel() for m in (model.model.layers[-1], model.model.norm, model.lm_head) for p in m.parameters()}
    c = 2 * ("gradient checkpointing on" in out.stdout)
    factor = (2 * every + (4 + c) * sum(kept.values())) / ((6 + c) * every)
    assert (f"selection levers: K = 4 responses per pool prompt, adaptive collection first 2: 180 of 240 responses "
            f"drawn (collection x0.75) ({tmp_path / 'manifest.json'}); cropi.popi.grad_layers=1: the last 1 blocks' "
            f"gradient (pass FLOPs x{factor:.3f}); cropi.num_stages=3") in out.stdout
