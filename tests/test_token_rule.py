"""The pad and stop rule (``models.special_tokens``) on a fixture laid out as SmolLM2-135M-Instruct is: no pad token,
the tokenizer's ``eos`` is ``<|im_start|>``, the chat turn ends with ``<|im_end|>``, which only the generation config
names (``policy_helpers.saved_chat_end_policy``). The references are independent: ids read off the tokenizer by
name, greedy decoding by plain full forwards (``greedy_tokens``), and the per-response autograd gradient.
"""

from __future__ import annotations

import asyncio
import json
import random

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cropi_verl.influence.gradients import PopiConfig, PromptRollouts, parameter_offsets, popi_features
from cropi_verl.influence.projection import make_projector
from cropi_verl.models.special_tokens import token_rule_of
from cropi_verl.models.tokenizer import IM_END, IM_START
from cropi_verl.rollout.collect import CollectConfig, collect_rollouts, hf_backend
from cropi_verl.rollout.hf_backend import chat_prompt_ids, sample_chat
from cropi_verl.rollout.records import RECORD_COLUMNS, Response, make_row, read_rollouts
from cropi_verl.verl_cpu.hf_rollout import HFServer
from influence_helpers import reference_gradient
from policy_helpers import greedy_tokens, plant_stop, saved_chat_end_policy, toy_prompts

QUESTIONS = ["What is 2 + 3?", "Bo has 17 coins and gets 25 more. How many coins now?"]
STOP_AT = 3  # the greedy step at which the planted <|im_end|> wins, for the first question


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    """The fixture folder with ``<|im_end|>`` planted at greedy step ``STOP_AT`` of the first question."""
    path = saved_chat_end_policy(tmp_path_factory.mktemp("chat_end"))
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompts = [chat_prompt_ids(tok, [{"role": "user", "content": q}]) for q in QUESTIONS]
    start, end = tok.convert_tokens_to_ids([IM_START, IM_END])
    plant_stop(model, prompts[0], end, STOP_AT)
    model.save_pretrained(path)
    greedy, _ = greedy_tokens(model, prompts[0], STOP_AT + 4)
    assert greedy[STOP_AT] == end and start not in greedy and end not in greedy[:STOP_AT]  # the fixture's premise
    return path, tok, model, prompts, start, end


def test_the_fixture_has_no_pad_and_its_eos_is_not_the_chat_end(policy):
    path, tok, _, prompts, start, end = policy
    assert tok.pad_token_id is None and tok.eos_token_id == start != end
    assert json.loads((path / "generation_config.json").read_text())["eos_token_id"] == end
    assert prompts[0][0] == start and end in prompts[0]  # the pad fallback's id is a real prompt token


def test_the_rule_pads_with_the_eos_and_stops_at_both(policy):
    path, tok, _, _, start, end = policy
    rule = token_rule_of(path)
    assert rule.pad_id == start and rule.stop_ids == tuple(sorted({start, end}))


def _cut(tokens: list[int], stops: set[int]) -> list[int]:
    """``tokens`` up to and including the first of ``stops``."""
    return next((tokens[: i + 1] for i, t in enumerate(tokens) if t in stops), tokens)


def test_sample_chat_ends_at_the_chat_end_token_also_left_padded(policy):
    """Greedy ``sample_chat`` of two prompts of other lengths (left-padded with the fallback pad) gives each prompt's
    plain-forward greedy tokens up to the first stop: ``<|im_end|>`` at step STOP_AT for the first."""
    _, tok, model, prompts, start, end = policy
    assert len(prompts[0]) != len(prompts[1])
    gens = sample_chat(model, tok, prompts, 1, 0.0, 1.0, STOP_AT + 4, seed=0)
    for prompt, (gen,) in zip(prompts, gens):
        want = _cut(greedy_tokens(model, prompt, STOP_AT + 4)[0], {start, end})
        assert gen.response_ids == want and gen.truncated == (want[-1] not in (start, end))
    assert gens[0][0].response_ids[-1] == end and len(gens[0][0].response_ids) == STOP_AT + 1


def test_verls_hf_rollout_ends_where_the_collection_ends(policy):
    """verl's HF rollout stand-in (``HFServer``, called as verl's server client calls it) stops greedy decoding at the
    same token as the offline collection's ``sample_chat``."""
    path, tok, model, prompts, _, end = policy
    server = HFServer(str(path), STOP_AT + 4, 256, num_threads=1)
    online = asyncio.run(server.generate(prompt_ids=prompts[0], sampling_params={"temperature": 0}, request_id="0"))
    offline = sample_chat(model, tok, prompts[:1], 1, 0.0, 1.0, STOP_AT + 4, seed=0)[0][0]
    assert online.token_ids == offline.response_ids and online.token_ids[-1] == end
    assert online.extra_fields["finish_reason"] == "stop"


def test_a_collection_runs_and_ends_every_finished_response_at_its_first_stop(policy, tmp_path):
    path, tok, model, _, start, end = policy
    cfg = CollectConfig(model=str(path), input=str(toy_prompts(tmp_path / "p.parquet", n=3)), n=2, temperature=1.0,
                        max_new_tokens=10, shard_size=3, batch_size=3)
    frame = read_rollouts(collect_rollouts(cfg, tmp_path / "out", hf_backend(model, tok, cfg), tok, progress=False),
                          token_rule_of(path).stop_ids)
    for ids, truncated in zip(frame["response_ids"].explode(), frame["truncated"].explode()):
        ids = list(ids)
        first = next((i for i, t in enumerate(ids) if t in (start, end)), None)
        assert (first is None and truncated and len(ids) == 10) or (first == len(ids) - 1 and not truncated)


def test_a_response_of_stop_tokens_only_is_flagged_empty(policy, tmp_path):
    path, _, _, _, start, end = policy
    responses = [Response([end], "", [-1.0], False), Response([start], "", [-1.0], False),
                 Response([7, end], "7", [-1.0, -1.0], False), Response([7, 8], "78", [-1.0, -1.0], True)]
    row = make_row(1, "cropi_toy/add", "train", "1", [start, 5, end], responses, [0.0, 1.0, 0.0, 1.0], None)
    pd.DataFrame([row], columns=list(RECORD_COLUMNS)).to_parquet(tmp_path / "r.parquet")
    flags = list(read_rollouts(tmp_path / "r.parquet", token_rule_of(path).stop_ids)["flag"].iloc[0])
    assert [f != "" for f in flags] == [True, True, False, False]


def test_the_gradient_pass_with_the_fallback_pad_matches_autograd(policy):
    """Chat prompts full of ``<|im_start|>`` (the fallback pad id) and ragged responses ending in ``<|im_end|>``:
    every padded and packed layout gives the per-response autograd gradient, so padding is masked by position, never
    by the id's value."""
    path, tok, model, prompts, start, end = policy
    rng = random.Random(0)
    rollouts = [PromptRollouts(i, p, [[rng.randrange(3, len(tok)) for _ in range(n)] + [end] for n in (1, 4, 2)],
                               [[-rng.uniform(1, 4) for _ in range(n + 1)] for n in (1, 4, 2)], [0.0, 1.0, 1.0])
                for i, p in enumerate(prompts)]
    _, dim = parameter_offsets(model)
    want = [reference_gradient(model, r) for r in rollouts]
    for pack in (False, True, "prompt_once"):
        res = popi_features(model, rollouts, make_projector("identity", dim), token_rule_of(path).pad_id,
                            PopiConfig(micro_batch_tokens=1 << 14, pack=pack, share_prompt=False))
        for feat, ref in zip(res.features, want):
            torch.testing.assert_close(feat, ref, rtol=1e-4, atol=1e-6)
    assert np.isfinite([float(w.abs().max()) for w in want]).all() and min(float(w.abs().max()) for w in want) > 1e-5
