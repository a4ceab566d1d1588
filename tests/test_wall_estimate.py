"""The demo's wall-time estimate (cropi_verl/local/wall_estimate.py): its arithmetic by hand, and the rates measured
on a tiny random-init model."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer

from cropi_verl.local.wall_estimate import Rates, estimate, evaluations, longest_per_call, measure_rates
from policy_helpers import saved_chat_end_policy

CFG = OmegaConf.create({
    "task": {"n_train": 10, "n_val": 3}, "offline": {"n": 2, "val_n": 4, "max_new_tokens": 8},
    "grpo": {"batch_size": 2, "n": 2, "max_new_tokens": 6}, "eval": {"k": 2, "max_new_tokens": 5, "every": 2},
    "curriculum": {"num_stages": 2, "steps_per_stage": 3}, "influence": {"max_val_prompts": 2},
    "methods": ["cropi", "full"]})
RATES = Rates(forward_s=0.01, gen_s=0.1, train_s=0.03)


def test_evaluations_count_step_zero_every_and_the_last():
    assert evaluations(6, 2) == 4  # 0, 2, 4, 6
    assert evaluations(7, 3) == 4  # 0, 3, 6, 7
    assert evaluations(1, 5) == 2  # 0, 1


def test_estimate_by_hand():
    p = 4.0
    parts = estimate(CFG, p, RATES, {"cropi": "cropi", "full": "full"}, collected=set())
    # collection: 10*2 + 3*4 + 3*4 = 44 rows; sampling 44 (8*0.1 + 4*0.01) = 36.96; log-probs 44*12*0.01 = 5.28
    assert parts["collection"] == pytest.approx(36.96 + 5.28)
    # a step: 4 rows sampled 4 (6*0.1 + 0.04) = 2.56, updated 4*10*0.03 = 1.2; an eval: 3 sets x 6 rows
    # 6 (5*0.1 + 0.04) = 3.24 each; 6 steps, evaluations(6, 2) = 4
    full = 6 * (2.56 + 1.2) + 4 * 3 * 3.24
    assert parts["full"] == pytest.approx(full)
    # cropi adds 2 passes of (10*2 + 2 sets x min(3, 2) x 4) = 36 rows x (4 + 8) positions x 0.03
    assert parts["cropi"] == pytest.approx(full + 2 * 36 * 12 * 0.03)
    # after the collection: budgets capped at the calls' longest response, 5 tokens; nothing left to collect
    later = estimate(CFG, p, RATES, {"full": "full"}, {"train", "val_add", "val_sub"}, longest=5.0)
    assert set(later) == {"full"}
    assert later["full"] == pytest.approx(6 * (4 * (5 * 0.1 + 0.04) + 4 * 9 * 0.03) + 4 * 3 * 3.24)


def test_longest_per_call():
    lengths = [[3, 5], [9, 1], [2, 2], [4, 7], [6, 6]]  # calls of 2 prompts: 9, 7, 6
    assert longest_per_call(lengths, 2) == pytest.approx(22 / 3)


def test_measure_rates_on_a_tiny_model(tmp_path):
    folder = saved_chat_end_policy(tmp_path)
    model, tok = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    rates = measure_rates(model, tok, [[5, 6, 7], [8, 9]], rows=4, micro_tokens=64)
    assert rates.forward_s > 0 and rates.gen_s > 0 and rates.train_s > 0
    assert all(p.grad is None for p in model.parameters())  # the calibration's gradients are dropped
