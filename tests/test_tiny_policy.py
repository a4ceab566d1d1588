"""The tiny policy: a loadable HF checkpoint with a locally trained ChatML tokenizer, cached by config,
whose warm-up lifts the pass rate from zero (random init) to a non-trivial level."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2ForCausalLM

from cropi_verl.data.toy_task import ToyTaskConfig, build_toy_task
from cropi_verl.eval.accuracy import avg_at_k, mean_by
from cropi_verl.models.tiny_policy import TinyPolicyConfig, build_tiny_policy, random_init_policy
from cropi_verl.utils.cache import cache_root

TASK = ToyTaskConfig(n_train=150, n_val=16, n_sft=2000)
CFG = TinyPolicyConfig(task=TASK, warmup_steps=300)


@pytest.fixture(scope="module")
def built():
    """The quick preset's policy (``CFG`` is its config) in the shared cache: the demo's and verl-on-CPU tests use the
    same one, so the suite warms it up once."""
    cache = cache_root() / "tiny_policy"
    return build_tiny_policy(CFG, cache), cache


def test_checkpoint_loads_like_any_hf_model(built):
    path, _ = built
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert isinstance(model, Qwen2ForCausalLM)
    assert model.config.vocab_size == len(tok)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>" and tok.padding_side == "left"
    text = tok.apply_chat_template([{"role": "user", "content": "What is 12 + 7?"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text == "<|im_start|>user\nWhat is 12 + 7?<|im_end|>\n<|im_start|>assistant\n"
    ids = tok("12 + 345", add_special_tokens=False)["input_ids"]
    assert [t for t in tok.convert_ids_to_tokens(ids) if t.isdigit()] == ["1", "2", "3", "4", "5"]  # digit-split
    assert tok.decode(ids) == "12 + 345"


def test_cache_hit_is_instant_and_keyed_by_config(built):
    path, cache = built
    t0 = time.time()
    assert build_tiny_policy(CFG, cache) == path
    assert time.time() - t0 < 1.0
    assert TinyPolicyConfig(task=TASK, warmup_steps=301).key() != CFG.key()


def test_warm_up_reaches_non_trivial_pass_rate(built):
    path, _ = built
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(path)
    warm = AutoModelForCausalLM.from_pretrained(path)
    cold = random_init_policy(CFG, tok)
    pool = build_toy_task(TASK)["train"].iloc[::2].reset_index(drop=True)
    acc_warm = avg_at_k(warm, tok, pool, k=2, max_new_tokens=32)
    acc_cold = avg_at_k(cold, tok, pool, k=2, max_new_tokens=32)
    assert acc_cold.mean() == 0.0
    assert 0.1 <= acc_warm.mean() <= 0.8, mean_by(pool, acc_warm, "family")
    # a mix: some prompts solved sometimes, some never -> GRPO groups are not all-zero
    assert np.mean((acc_warm > 0) & (acc_warm < 1)) > 0.05
    assert mean_by(pool, acc_warm, "tier")["1"] > mean_by(pool, acc_warm, "tier")["3"]


@pytest.mark.slow
def test_default_policy_initial_pass_rate_in_target_band(tmp_path):
    """The demo's default policy: built in <= 3 min, initial pool pass rate roughly 20%-60%."""
    t0 = time.time()
    path = build_tiny_policy(TinyPolicyConfig(), tmp_path)
    assert time.time() - t0 < 200
    tok = AutoTokenizer.from_pretrained(path)
    pool = build_toy_task(ToyTaskConfig())["train"].iloc[::3].reset_index(drop=True)
    acc = avg_at_k(AutoModelForCausalLM.from_pretrained(path), tok, pool, k=4, max_new_tokens=32)
    assert 0.2 <= acc.mean() <= 0.6, mean_by(pool, acc, "family")
