"""Offline rollout collection: kill + resume is byte-identical, stored log-probs are the policy's, vLLM output
conversion, flags for empty generations / NaN rewards, long-prompt skipping, manifest mismatch."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cropi_verl.rollout.collect import (
    CollectConfig,
    RolloutManifestMismatch,
    collect_rollouts,
    vllm_outputs_to_responses,
)
from cropi_verl.rollout.records import Response, make_row, to_prompt_rollouts
from policy_helpers import saved_random_policy, toy_prompts
from scripts_helpers import ROOT


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("roll")
    return saved_random_policy(d / "policy"), toy_prompts(d / "train.parquet", n=24)


def _cli(policy, prompts, out, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "collect_rollouts.py"), "--model", str(policy), "--input", str(prompts),
         "--out", str(out), "--n", "4", "--temperature", "1.0", "--max-new-tokens", "12", "--shard-size", "5",
         "--batch-size", "5", "--threads", "1"],
        env=env, capture_output=True, text=True, timeout=300,
    )


def test_kill_mid_collection_then_rerun_is_byte_identical(setup, tmp_path):
    policy, prompts = setup
    assert _cli(policy, prompts, tmp_path / "ref").returncode == 0
    killed = _cli(policy, prompts, tmp_path / "run", {"CROPI_KILL_AT": "rollout_shard:2"})
    assert killed.returncode == -9  # SIGKILL after the second shard
    shards = sorted(p.name for p in (tmp_path / "run" / "shards").iterdir())
    assert shards == ["shard_00000.parquet", "shard_00001.parquet"]  # no half-written file
    assert not (tmp_path / "run" / "rollouts.parquet").exists()
    resumed = _cli(policy, prompts, tmp_path / "run")
    assert resumed.returncode == 0, resumed.stderr
    ref = (tmp_path / "ref" / "rollouts.parquet").read_bytes()
    assert (tmp_path / "run" / "rollouts.parquet").read_bytes() == ref
    df = pd.read_parquet(tmp_path / "ref" / "rollouts.parquet")
    assert len(df) == 24 and all(len(r) == 4 for r in df["response_ids"])


def test_stored_logprobs_match_fresh_forward(setup, tmp_path):
    policy, prompts = setup
    assert _cli(policy, prompts, tmp_path / "r").returncode == 0
    df = pd.read_parquet(tmp_path / "r" / "rollouts.parquet").iloc[:3]
    model = AutoModelForCausalLM.from_pretrained(policy).eval()
    for row in df.itertuples():
        for resp, lps in zip(row.response_ids, row.logprobs):
            ids = torch.tensor([list(row.prompt_token_ids) + list(resp)])
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0]
            p = len(row.prompt_token_ids)
            ref = [torch.log_softmax(logits[p - 1 + t], -1)[tok].item() for t, tok in enumerate(resp)]
            assert list(lps) == pytest.approx(ref, abs=1e-4)


def test_corrupt_shard_is_redone_and_mismatch_rejected(setup, tmp_path):
    policy, prompts = setup
    assert _cli(policy, prompts, tmp_path / "r").returncode == 0
    ref = (tmp_path / "r" / "rollouts.parquet").read_bytes()
    shard = tmp_path / "r" / "shards" / "shard_00003.parquet"
    shard.write_bytes(shard.read_bytes()[:100])
    assert _cli(policy, prompts, tmp_path / "r").returncode == 0
    assert (tmp_path / "r" / "rollouts.parquet").read_bytes() == ref
    tok = AutoTokenizer.from_pretrained(policy)
    other = CollectConfig(model=str(policy), input=str(prompts), n=2, temperature=1.0, max_new_tokens=12,
                          shard_size=5, batch_size=5)
    with pytest.raises(RolloutManifestMismatch, match="different config"):
        collect_rollouts(other, tmp_path / "r", lambda p, s: [], tok, progress=False)


def test_long_prompts_skipped_and_counted(setup, tmp_path):
    policy, prompts = setup
    tok = AutoTokenizer.from_pretrained(policy)
    texts = [tok.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True)
             for p in pd.read_parquet(prompts)["prompt"]]
    lens = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    limit = sorted(lens)[len(lens) // 2]
    cfg = CollectConfig(model=str(policy), input=str(prompts), n=2, max_new_tokens=4, max_prompt_tokens=limit)
    fake = lambda ps, seed: [[Response([5, tok.eos_token_id], "x", [-1.0, -1.0], False)] * 2 for _ in ps]  # noqa: E731
    path = collect_rollouts(cfg, tmp_path, fake, tok, progress=False)
    import json

    manifest = json.loads((tmp_path / "manifest.json").read_text())
    n_long = sum(n > limit for n in lens)
    assert n_long > 0 and len(manifest["skipped_long_prompts"]) == n_long
    assert len(pd.read_parquet(path)) == len(lens) - n_long


def test_empty_and_nan_are_flagged_not_scored():
    eos = 2
    resp = [Response([eos], "", [-0.5], False), Response([7, eos], "a", [-1.0, -0.1], False),
            Response([8, eos], "b", [-1.0, -0.1], False), Response([9], "c", [-2.0], True)]
    row = make_row(5, "cropi_toy/add", "train", "3", [1, 2], resp, [0.0, float("nan"), 1.0, 0.0], eos)
    assert row["flag"] == ["empty", "nan_reward", "", ""]
    assert math.isnan(row["reward"][0]) and math.isnan(row["reward"][1])
    assert row["n_valid"] == 2 and row["pass_rate"] == 0.5 and row["reward_std"] == 0.5
    assert row["truncated"] == [False, False, False, True]
    (pr,) = to_prompt_rollouts(pd.DataFrame([row]))
    assert pr.rewards == [1.0, 0.0] and pr.responses == [[8, eos], [9]]


def test_vllm_output_conversion_on_hand_built_objects():
    lp = lambda v: SimpleNamespace(logprob=v, rank=1, decoded_token=None)  # noqa: E731
    c1 = SimpleNamespace(token_ids=[11, 12, 2], text="hi", finish_reason="stop",
                         logprobs=[{11: lp(-0.1), 99: lp(-3.0)}, {12: lp(-0.2)}, {2: lp(-0.3)}])
    c2 = SimpleNamespace(token_ids=[13, 14], text="yo", finish_reason="length", logprobs=[{13: lp(-1.0)}, {14: lp(-2.0)}])
    req = SimpleNamespace(request_id="0", outputs=[c1, c2])
    (group,) = vllm_outputs_to_responses([req])
    assert group[0].token_ids == [11, 12, 2] and group[0].logprobs == [-0.1, -0.2, -0.3] and not group[0].truncated
    assert group[1].truncated and group[1].logprobs == [-1.0, -2.0]
    bad = SimpleNamespace(request_id="7", outputs=[SimpleNamespace(token_ids=[1], text="", finish_reason="stop", logprobs=None)])
    with pytest.raises(ValueError, match="request 7: missing per-token logprobs"):
        vllm_outputs_to_responses([bad])
