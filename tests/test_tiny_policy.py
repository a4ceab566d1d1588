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


def test_commands_asking_for_one_policy_at_once_build_it_once(tmp_path):
    """Two commands that ask for an uncached policy while a third holds its build lock both wait; once it is free,
    one builds and the other reads its cache (one "built" line in all)."""
    import fcntl
    import subprocess
    import sys

    from cropi_verl.models.tiny_policy import tiny_policy_dir

    small = TinyPolicyConfig(task=ToyTaskConfig(n_train=10, n_val=4, n_sft=60), warmup_steps=2, warmup_batch_size=4)
    out = tiny_policy_dir(small, tmp_path)
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stderr); "
            "from cropi_verl.data.toy_task import ToyTaskConfig; "
            "from cropi_verl.models.tiny_policy import TinyPolicyConfig, build_tiny_policy; "
            f"print(build_tiny_policy({small!r}, __import__('pathlib').Path({str(tmp_path)!r})))")
    tmp_path.mkdir(exist_ok=True)
    with open(out.with_name(out.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
        for proc in procs:  # each says it waits, and nothing is built while the lock is held
            for line in proc.stderr:
                if "waiting for another command building the tiny policy" in line:
                    break
        assert not out.exists()
    results = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], results
    assert [stdout.strip() for stdout, _ in results] == [str(out), str(out)]
    assert sum("built tiny policy" in stderr for _, stderr in results) == 1
    assert (out / "build_info.json").is_file() and not list(tmp_path.glob("*.tmp*"))
