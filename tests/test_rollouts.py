"""Offline rollout collection: kill + resume is byte-identical, stored log-probs are the policy's (rho = 1 at beta),
the log-prob recompute both backends use (in bf16: against the bf16 worker's forward), vLLM output conversion and
engine split, flags for empty generations / NaN rewards, long-prompt skipping, a seeded prompt draw, manifest
mismatch, the record arrays' parquet types."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cropi_verl.influence.gradients import response_logprobs
from cropi_verl.rollout.collect import (CollectConfig, RolloutManifestMismatch, collect_rollouts, hf_backend,
                                        manifest_mismatch, other_model_problem)
from cropi_verl.rollout.hf_backend import behaviour_logprobs, token_batches
from cropi_verl.rollout.records import RECORD_COLUMNS, Response, make_row, to_prompt_rollouts
from cropi_verl.rollout.vllm_backend import request_seeds, split_evenly, vllm_outputs_to_responses
from policy_helpers import saved_random_policy, toy_prompts
from scripts_helpers import ROOT


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("roll")
    return saved_random_policy(d / "policy"), toy_prompts(d / "train.parquet", n=24)


def _cli(policy, prompts, out, env_extra=None, extra=()):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "collect_rollouts.py"), "--model", str(policy), "--input", str(prompts),
         "--out", str(out), "--n", "4", "--temperature", "1.0", "--max-new-tokens", "12", "--shard-size", "5",
         "--batch-size", "5", "--threads", "1", *extra],
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


def test_the_same_inputs_by_another_path_are_reused_and_other_content_is_not(setup, tmp_path):
    """A rerun naming the prompts file and the model by another path (absolute for relative, a copy, a link) reuses
    the rollouts; a prompts file with other bytes at the recorded path is refused by content."""
    policy, prompts = setup
    tok = AutoTokenizer.from_pretrained(policy)
    cfg = CollectConfig(model=str(policy), input=str(prompts), n=2, max_new_tokens=4, shard_size=50)
    collect_rollouts(cfg, tmp_path / "r", lambda p, s: [[Response([5], "", [-1.0], False)] * 2 for _ in p], tok,
                     progress=False)
    (tmp_path / "copy.parquet").write_bytes(prompts.read_bytes())
    (tmp_path / "model").symlink_to(policy)
    moved = CollectConfig(model=str(tmp_path / "model"), input=str(tmp_path / "copy.parquet"), n=2, max_new_tokens=4,
                          shard_size=50)
    assert manifest_mismatch(tmp_path / "r", moved) is None
    (tmp_path / "copy.parquet").write_bytes(toy_prompts(tmp_path / "other.parquet", n=23).read_bytes())
    assert manifest_mismatch(tmp_path / "r", moved) == (f"{tmp_path / 'r' / 'manifest.json'}: rollouts were collected "
                                                        "with a different config (the input's content)")


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
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    n_long = sum(n > limit for n in lens)
    assert n_long > 0 and len(manifest["skipped_long_prompts"]) == n_long
    assert len(pd.read_parquet(path)) == len(lens) - n_long


def test_an_adaptive_collection_draws_the_rest_only_where_the_first_draw_differs(setup, tmp_path):
    """``adaptive_first`` = 2 of n = 4 with a backend whose rewards follow a table (response k of prompt p right iff
    ``RIGHT[p % 5][k]``): every prompt gets 2 first; the prompts whose first 2 agree keep them, the others get the
    2 more of the table; the calls and the manifest's counts against the table by hand."""
    policy, prompts = setup
    tok = AutoTokenizer.from_pretrained(policy)
    frame = pd.read_parquet(prompts)
    RIGHT = [(1, 1, 0, 0), (0, 0, 1, 1), (1, 0, 0, 0), (0, 1, 1, 1), (0, 0, 0, 0)]
    texts = [tok.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True) for p in frame["prompt"]]
    row_of = {tuple(tok(t, add_special_tokens=False)["input_ids"]): i for i, t in enumerate(texts)}
    calls = []

    def fake(ps, seed, n=4):
        calls.append((len(ps), n))
        out = []
        for ids in ps:
            p = row_of[tuple(ids)]
            part = RIGHT[p % 5][:n] if n == 2 and len(calls) % 2 else RIGHT[p % 5][4 - n:]
            gt = frame["reward_model"].iloc[p]["ground_truth"]
            out.append([Response([5, 6], f"\\boxed{{{gt}}}" if r else "no idea", [-1.0, -1.0], False) for r in part])
        return out

    cfg = CollectConfig(model=str(policy), input=str(prompts), n=4, max_new_tokens=4, shard_size=10,
                        adaptive_first=2)
    df = pd.read_parquet(collect_rollouts(cfg, tmp_path / "r", fake, tok, progress=False))
    mixed = [p for p in range(24) if RIGHT[p % 5][0] != RIGHT[p % 5][1]]  # rows 2, 3 of every 5
    assert [list(r) for r in df["reward"]] == [list(map(float, RIGHT[p % 5] if p in mixed else RIGHT[p % 5][:2]))
                                              for p in range(24)]
    shard_mixed = [sum(p in mixed for p in range(j, min(j + 10, 24))) for j in (0, 10, 20)]
    assert calls == [c for j, size in zip(range(3), (10, 10, 4)) for c in ((size, 2), (shard_mixed[j], 2))]
    adaptive = json.loads((tmp_path / "r" / "manifest.json").read_text())["adaptive"]
    assert adaptive == {"first": 2, "stopped_prompts": 24 - len(mixed), "prompts": 24,
                        "responses": 2 * 24 + 2 * len(mixed), "responses_at_n": 96}
    with pytest.raises(ValueError, match=r"adaptive_first=5: expected null or an integer 2 \.\. n=4"):
        CollectConfig(model="m", input="i", n=4, adaptive_first=5)
    model = AutoModelForCausalLM.from_pretrained(policy).eval()  # the HF backend draws the n it is asked for
    first = list(row_of)[:3]
    assert [len(g) for g in hf_backend(model, tok, cfg)(first, 0, 3)] == [3, 3, 3]


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
    assert pr.rewards == [1.0, 0.0] and [r.tolist() for r in pr.responses] == [[8, eos], [9]]
    assert all(r.dtype == np.int64 for r in pr.responses) and pr.behaviour_logprobs[0].dtype == np.float64


def test_vllm_output_conversion_on_hand_built_objects():
    c1 = SimpleNamespace(token_ids=[11, 12, 2], text="hi", finish_reason="stop", logprobs=None)
    c2 = SimpleNamespace(token_ids=(13, 14), text="yo", finish_reason="length", logprobs=None)
    (group,) = vllm_outputs_to_responses([SimpleNamespace(request_id="0", outputs=[c1, c2])])
    assert list(group[0].token_ids) == [11, 12, 2] and group[0].text == "hi" and not group[0].truncated
    assert list(group[1].token_ids) == [13, 14] and group[1].truncated
    assert group[0].logprobs is None and group[1].logprobs is None  # recomputed by the HF model, never vLLM's


def test_engine_split_and_per_prompt_seeds():
    assert split_evenly(10, 4) == [slice(0, 2), slice(2, 5), slice(5, 8), slice(8, 10)]
    assert split_evenly(3, 3) == [slice(0, 1), slice(1, 2), slice(2, 3)] and split_evenly(0, 0) == []
    seeds = request_seeds(1_000_003, 64)
    assert len(set(seeds)) == 64 and all(0 <= s < 2**32 for s in seeds)
    assert request_seeds(1_000_003, 64) == seeds and request_seeds(1_000_004, 64) != seeds
    assert request_seeds(1_000_003, 10) == seeds[:10]  # a prompt's seed depends on its shard and position only


def test_token_batches_respect_the_budget():
    assert token_batches([3, 3, 4, 9, 2], 12) == [[0, 1, 2], [3], [4]]  # 3 x 4 = 12; 9 alone; 2
    assert token_batches([20], 8) == [[0]]  # a longer row is a batch of its own
    assert token_batches([], 8) == []


def _manual_logprobs(model, prompt, resp) -> list[float]:
    """Reference: one unpadded forward of prompt + response, log-softmax at each response position."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([list(prompt) + list(resp)])).logits[0]
    p = len(prompt)
    return [torch.log_softmax(logits[p - 1 + t], -1)[tok].item() for t, tok in enumerate(resp)]


def test_behaviour_logprobs_match_unbatched_forwards(setup):
    policy, _ = setup
    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32).eval()
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 300, size=n).tolist() for n in (5, 9, 4, 7)]
    responses = [rng.integers(3, 300, size=n).tolist() for n in (6, 2, 8, 0)]
    for max_tokens in (1, 24, 10_000):  # one row per forward, padded batches of a few rows, one batch
        got = behaviour_logprobs(model, prompts, responses, 0, max_tokens)
        assert [g.dtype for g in got] == [np.float32] * 4 and len(got[3]) == 0
        for p, r, g in zip(prompts[:3], responses[:3], got[:3]):
            assert g.tolist() == pytest.approx(_manual_logprobs(model, p, r), abs=1e-5)
            ref, _ = response_logprobs(model, [p], [r], 0)
            assert g.tolist() == pytest.approx(ref[0].tolist(), abs=1e-5)


def test_rho_is_one_at_beta_for_the_stored_logprobs(setup, tmp_path):
    policy, prompts = setup
    assert _cli(policy, prompts, tmp_path / "r").returncode == 0
    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32).eval()
    pad = AutoTokenizer.from_pretrained(policy).pad_token_id
    for pr in to_prompt_rollouts(pd.read_parquet(tmp_path / "r" / "rollouts.parquet").iloc[:4]):
        with torch.no_grad():
            logp, mask = response_logprobs(model, [pr.prompt_ids] * len(pr.responses), pr.responses, pad)
        for k, beh in enumerate(pr.behaviour_logprobs):
            rho = torch.exp(logp[k, : len(beh)] - torch.tensor(list(beh), dtype=torch.float32))
            assert torch.allclose(rho, torch.ones_like(rho), atol=1e-5)


def test_bf16_logprobs_match_the_bf16_worker_forward(setup, tmp_path):
    """``--logprob-dtype bfloat16`` (what the recipes pass: GPU workers run in bf16) is recorded in the manifest and
    the stored log-probs agree with the worker's forward, ``response_logprobs`` on the policy loaded in bf16 (one
    prompt's responses per batch). Not bit for bit: the recompute batches rows of several prompts, padded to other
    widths, and bf16 matmuls of other shapes round differently, by a few bf16 ulps (2^-8 relative) of the O(1)
    logits: |log rho| <= 1e-2 per token, 1e-4 on average (most tokens are bit-identical). An fp32 recompute of the
    same rows, unbatched, is off by its fp32-vs-bf16 rounding on every token: a larger mean."""
    policy, prompts = setup
    assert _cli(policy, prompts, tmp_path / "r", extra=("--logprob-dtype", "bfloat16")).returncode == 0
    assert json.loads((tmp_path / "r" / "manifest.json").read_text())["config"]["logprob_dtype"] == "bfloat16"
    worker = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.bfloat16).eval()  # as InfluenceWorker loads it
    fp32 = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32).eval()
    pad = AutoTokenizer.from_pretrained(policy).pad_token_id
    stored_gap, fp32_gap = [], []
    for pr in to_prompt_rollouts(pd.read_parquet(tmp_path / "r" / "rollouts.parquet")):
        with torch.no_grad():
            logp, _ = response_logprobs(worker, [pr.prompt_ids] * len(pr.responses), pr.responses, pad)
            ref, _ = response_logprobs(fp32, [pr.prompt_ids] * len(pr.responses), pr.responses, pad)
        for k, beh in enumerate(pr.behaviour_logprobs):
            stored_gap += (logp[k, : len(beh)] - torch.tensor(list(beh), dtype=torch.float32)).abs().tolist()
            fp32_gap += (logp[k, : len(beh)] - ref[k, : len(beh)]).abs().tolist()
    assert max(stored_gap) <= 1e-2 and np.mean(stored_gap) <= 1e-4
    assert np.mean(fp32_gap) > 3 * np.mean(stored_gap)


def test_max_prompts_collects_a_seeded_draw(setup, tmp_path):
    policy, prompts = setup
    tok = AutoTokenizer.from_pretrained(policy)
    fake = lambda ps, seed: [[Response([5, tok.eos_token_id], "x", [-1.0, -1.0], False)] * 2 for _ in ps]  # noqa: E731
    ids = pd.read_parquet(prompts)["extra_info"].map(lambda e: e["index"]).tolist()
    cfg = CollectConfig(model=str(policy), input=str(prompts), n=2, max_new_tokens=4, max_prompts=5, seed=3)
    got = pd.read_parquet(collect_rollouts(cfg, tmp_path / "a", fake, tok, progress=False))["prompt_id"].tolist()
    want = [ids[i] for i in sorted(np.random.default_rng(3).permutation(len(ids))[:5])]
    assert got == want


def test_records_hold_arrays_with_the_plain_list_parquet_types():
    row = make_row(1, "gsm8k", "train", "3", [1, 2], [Response([4, 5, 2], "a", [-1.0, -2.0, -0.5], False)], [1.0], 2)
    assert isinstance(row["prompt_token_ids"], np.ndarray) and row["response_ids"][0].dtype == np.int64
    assert row["logprobs"][0].dtype == np.float64
    plain = dict(row, prompt_token_ids=[1, 2], response_ids=[[4, 5, 2]], logprobs=[[-1.0, -2.0, -0.5]])
    schema = lambda r: pa.Table.from_pandas(pd.DataFrame([r], columns=list(RECORD_COLUMNS))).schema.remove_metadata()  # noqa: E731
    assert schema(row) == schema(plain)


def test_verifier_failures_are_dropped_and_counted_and_too_many_stop_the_collection(setup, tmp_path, monkeypatch):
    """A response the verifier fails on gets a NaN reward (flagged, never scored); a shard where more than the allowed
    share fails is not written and the collection stops with one error. The verifier's failure is a stand-in
    (``score_or_nan`` returning NaN for every third response): it shows the collection's handling only."""
    import cropi_verl.rollout.collect as collect

    policy, prompts = setup
    tok = AutoTokenizer.from_pretrained(policy)
    calls = iter(range(10**6))
    monkeypatch.setattr(collect, "score_or_nan", lambda *a: float("nan") if next(calls) % 3 == 0 else 1.0)
    cfg = CollectConfig(model=str(policy), input=str(prompts), n=3, max_new_tokens=4, shard_size=6)
    fake = lambda ps, seed: [[Response([5, tok.eos_token_id], "x", [-1.0, -1.0], False)] * 3 for _ in ps]  # noqa: E731
    with pytest.raises(collect.VerifierFailures, match=r"shard 0: the verifier \(math-verify\) failed on 6 of 18"):
        collect_rollouts(cfg, tmp_path / "strict", fake, tok, progress=False)
    assert not (tmp_path / "strict" / "shards").exists()  # nothing half-decided is kept
    path = collect_rollouts(cfg, tmp_path / "lenient", fake, tok, progress=False, max_verifier_failures=0.5)
    flags = pd.read_parquet(path)["flag"]
    assert [list(f) for f in flags[:2]] == [["nan_reward", "", ""]] * 2  # every third response, in order
    assert json.loads((tmp_path / "lenient" / "manifest.json").read_text())["n_flagged_responses"] == 24 * 3 // 3


def test_a_collection_that_fails_before_its_first_shard_leaves_nothing(setup, tmp_path):
    """The backend raises on the first shard: no manifest.json, no shard, no rollouts (the directory only holds the
    run lock's leftovers, if any)."""
    policy, prompts = setup
    tok = AutoTokenizer.from_pretrained(policy)
    cfg = CollectConfig(model=str(policy), input=str(prompts), n=2, max_new_tokens=4, shard_size=50)

    def broken(prompt_ids, seed):
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        collect_rollouts(cfg, tmp_path / "r", broken, tok, progress=False)
    assert not (tmp_path / "r" / "manifest.json").exists() and not (tmp_path / "r" / "shards").exists()
    assert not (tmp_path / "r" / "rollouts.parquet").exists()


def test_rollouts_of_other_weights_are_named_by_content_and_a_copy_is_the_same_model(setup, tmp_path):
    """``other_model_problem``: a copy of beta's folder under another path is beta; other weights under beta's own
    path are not; a rollouts file with no manifest (made by hand) is not judged."""
    policy, prompts = setup
    tok = AutoTokenizer.from_pretrained(policy)
    model_dir = tmp_path / "beta"
    shutil.copytree(policy, model_dir)
    cfg = CollectConfig(model=str(model_dir), input=str(prompts), n=2, max_new_tokens=4, shard_size=50)
    path = collect_rollouts(cfg, tmp_path / "r", lambda p, s: [[Response([5], "", [-1.0], False)] * 2 for _ in p],
                            tok, progress=False)
    shutil.copytree(policy, tmp_path / "copy")
    assert other_model_problem(path, str(model_dir)) is None and other_model_problem(path, str(tmp_path / "copy")) is None
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    model.save_pretrained(model_dir)
    problem = other_model_problem(path, str(model_dir))
    assert problem.startswith(f"collected from {model_dir} ") and "another model than" in problem
    alone = tmp_path / "alone" / "rollouts.parquet"
    alone.parent.mkdir()
    alone.write_bytes(path.read_bytes())
    assert other_model_problem(alone, "/models/anything") is None
