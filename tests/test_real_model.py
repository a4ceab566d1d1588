"""The real pretrained model (the ``smollm2-135m`` preset, cached in ``$CROPI_CACHE_DIR``) through the paths the
tiny fixtures stand in for: its special tokens, a few-shot prompt answered and ended at ``<|im_end|>``, the gradient
pass against autograd at 134.5M parameters. Slow: ``-m slow``. Without the fetched preset they fail with one line
saying how to fetch it (they never skip)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cropi_verl.data.toy_task import ToyTaskConfig, build_toy_task, in_prompt_format
from cropi_verl.influence.gradients import PopiConfig, PromptRollouts, parameter_offsets, popi_features
from cropi_verl.influence.projection import make_projector
from cropi_verl.models.presets import ModelFolderError, resolve_model
from cropi_verl.models.special_tokens import token_rule_of
from cropi_verl.rewards import compute_score
from cropi_verl.rollout.hf_backend import chat_prompt_ids, sample_chat
from influence_helpers import reference_gradient
from scripts_helpers import logged

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    try:
        path = resolve_model("smollm2-135m")
    except ModelFolderError as e:
        pytest.fail(str(e), pytrace=False)
    return path, AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def test_its_tokens_follow_the_rule(smollm2):
    """No pad token; the tokenizer's eos is <|im_start|>, the generation config's <|im_end|>: pad with the former,
    stop at both."""
    path, tok, model = smollm2
    start, end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert tok.pad_token_id is None and tok.eos_token_id == start
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    rule = token_rule_of(path)
    assert rule.pad_id == start and set(rule.stop_ids) == {start, end}


def test_a_fewshot_prompt_is_answered_and_ended_at_the_chat_end(smollm2):
    """Greedy answers to tier-1 prompts in the few-shot format end with <|im_end|> well before the budget, and the
    task's reward scores some of them right."""
    _, tok, model = smollm2
    rows = in_prompt_format(build_toy_task(ToyTaskConfig(n_train=30, n_val=4, n_sft=10))["val_add"], "fewshot")
    end = tok.convert_tokens_to_ids("<|im_end|>")
    gens = sample_chat(model, tok, [chat_prompt_ids(tok, list(p)) for p in rows["prompt"]], 1, 0.0, 1.0, 48, seed=0)
    assert all(g.response_ids[-1] == end and not g.truncated for (g,) in gens)
    scores = [compute_score(r["data_source"], tok.decode(g.response_ids, skip_special_tokens=True),
                            r["reward_model"]["ground_truth"]) for (g,), (_, r) in zip(gens, rows.iterrows())]
    assert set(scores) <= {0.0, 1.0}


def test_the_gradient_pass_matches_autograd_at_134m_parameters(smollm2):
    """Packed rows against autograd on one padded row per response. The two sum in other orders in fp32, so a few
    of the 134.5M coordinates differ in their last bits (one by 1.3e-6 absolute on a 9e-5 value, seen): the bound is
    relative to the gradient's scale, |a - b| <= 1e-3 |b| + 1e-4 max|b| per coordinate and 1e-5 |b| in norm. A wrong
    mask, weight or advantage moves whole blocks of coordinates by the gradient's own size."""
    path, tok, model = smollm2
    prompt = chat_prompt_ids(tok, [{"role": "user", "content": "What is 7 + 8?"}])
    end = tok.convert_tokens_to_ids("<|im_end|>")
    rng = random.Random(0)
    responses = [tok("7 + 8 = 15. The answer is 15.", add_special_tokens=False)["input_ids"] + [end],
                 tok("The answer is 16.", add_special_tokens=False)["input_ids"] + [end]]
    rollouts = [PromptRollouts(0, prompt, responses, [[-rng.uniform(0.5, 3) for _ in r] for r in responses], [1.0, 0.0])]
    _, dim = parameter_offsets(model)
    res = popi_features(model, rollouts, make_projector("identity", dim), token_rule_of(path).pad_id,
                        PopiConfig(micro_batch_tokens=4096, pack=True))
    got, ref = res.features[0], reference_gradient(model, rollouts[0])
    torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-4 * ref.abs().max().item())
    assert (got - ref).norm() <= 1e-5 * ref.norm()


def test_the_gpu_recipe_runs_on_verls_trainer_on_the_cpu_with_the_real_model(smollm2, tmp_path):
    """Issue 33 item 6b: ``DEVICE=cpu MODEL=smollm2-135m bash recipes/run_cropi_qwen1.5b.sh``, 2 stages x 2 steps, at a
    scale the 135M model runs in about half an hour on 2 cores (a pool of 48 raw prompts, validation splits of 16,
    8 targeted prompts x 16 responses, 64 new tokens, 4 prompts x 8 responses per step): raw datasets, prepare_data,
    the hf collection under the model's stop rule, preflight and verl's trainer, every step for real. Each stage
    selects by an influence pass, no reward fails, the last step validates every evaluation set, and no offline
    response runs on past the chat's end token."""
    root = Path(__file__).resolve().parents[1]
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    env = dict(os.environ, DEVICE="cpu", MODEL="smollm2-135m", OUT=str(out), PYTHON=sys.executable, CPU_POOL="48",
               CPU_VAL="16", VAL_PROMPTS="8", VAL_RESPONSES="16", MAX_RESPONSE="64")
    cmd = ["bash", "recipes/run_cropi_qwen1.5b.sh", f"trainer.default_local_dir={ckpt}", "cropi.steps_per_stage=2",
           "trainer.save_freq=2", "trainer.test_freq=4", "data.train_batch_size=4",
           "actor_rollout_ref.actor.ppo_mini_batch_size=4"]
    t0 = time.time()
    res = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=5400, env=env)
    print(f"recipe: {time.time() - t0:.0f} s")
    text = res.stdout + res.stderr
    assert res.returncode == 0, text[-4000:]
    assert "Traceback" not in text and "tiny policy" not in text, text[-3000:]  # MODEL given: no tiny policy built
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "4"
    states = [json.loads(p.read_text()) for p in sorted((ckpt / "cropi").glob("stage_*/state.json"))]
    assert [s["start_step"] for s in states] == [0, 2]
    for state in states:
        assert state["selected_ids"] and state["stats"]["n_gradients"] > 0
    path, _, _ = smollm2
    stops = set(token_rule_of(path).stop_ids)  # <|im_end|> and the tokenizer's eos, <|im_start|>
    for split in ("train", "gsm8k_heldout", "math_heldout"):
        frame = pd.read_parquet(out / "rollouts" / split / "rollouts.parquet")
        for responses in frame["response_ids"]:
            for r in map(list, responses):  # ends at its first stop token, or is cut at the budget before any
                assert (r[-1] in stops and not stops & set(r[:-1])) or (len(r) == 64 and not stops & set(r))
    assert logged(res.stdout, "cropi/failed_samples") == {1: 0.0, 2: 0.0, 3: 0.0, 4: 0.0}
    for source in ("gsm8k", "math500", "aime24", "amc23", "gaokao2023en", "olympiadbench"):
        assert f"val-core/{source}/acc/mean@1" in res.stdout, source
