"""The ``hf`` rollout (cropi_verl/verl_cpu/hf_rollout.py) against independent references: a plain forward pass for the
log-probs, ``model.generate`` for greedy decoding, and a second model for weight updates. The server runs as a real
Ray actor, launched by ``HFReplica``; requests are sent concurrently, so they are batched.

Log-prob convention under test: ``log_softmax(logits / temperature)`` at the sampled token (top-k/top-p off), and the
top-k-renormalised distribution when top-k is on (vLLM's ``processed_logprobs``).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from types import SimpleNamespace

import pytest
import ray
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer
from verl.workers.config import RolloutConfig
from verl.workers.rollout.base import get_rollout_class
from verl.workers.rollout.replica import RolloutMode, RolloutReplicaRegistry

from cropi_verl.rollout.hf_backend import chat_prompt_ids
from cropi_verl.verl_cpu.hf_rollout import HFReplica, HFServer, HFServerAdapter, register_hf_rollout
from policy_helpers import saved_random_policy

RESPONSE_LENGTH = 8
QUESTIONS = ["What is 2 + 3?", "Add 17 and 25.", "Hi", "Compute 123 * 4 and explain the steps briefly."]


def _perturbed(path, seed: int):
    """The saved policy plus N(0, 0.2^2) noise on every weight. (The random init alone greedily repeats one token;
    this one varies its tokens, keeps a broad distribution, and its greedy argmax margins are >= 4e-3.)"""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.2)
    return model


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    path = saved_random_policy(tmp_path_factory.mktemp("hf_policy"))
    _perturbed(path, seed=1).save_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompts = [chat_prompt_ids(tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]
    return SimpleNamespace(path=path, model=model, tokenizer=tokenizer, prompts=prompts)


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=4, include_dashboard=False)
    yield
    ray.shutdown()


def _rollout_config(**overrides) -> RolloutConfig:
    base = dict(name="hf", tensor_model_parallel_size=1, response_length=RESPONSE_LENGTH, prompt_length=64, seed=7,
                custom={"hf_server": {"num_threads": 1}})
    return RolloutConfig(**{**base, **overrides})


@ray.remote(num_cpus=0)
class _StandInWorker:
    """Stands in for the actor worker that ``init_hybrid`` hands the replica (only its node is read)."""


@pytest.fixture(scope="module")
def replica(policy, ray_cluster):
    """An ``HFReplica`` started as the v1 trainer starts it, ``init_hybrid(actor worker group)``: one ``HFServer``."""
    model_config = OmegaConf.create({"path": str(policy.path)})
    replica = HFReplica(replica_rank=0, config=_rollout_config(), model_config=model_config, gpus_per_node=1)
    asyncio.run(replica.init_hybrid(SimpleNamespace(workers=[_StandInWorker.remote()])))
    yield replica
    ray.kill(replica.server_handle)


def _generate(server, prompts, **sampling):
    """Send all requests at once (so the server batches them) and wait for the outputs."""
    params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": True, **sampling}
    refs = [server.generate.remote(prompt_ids=p, sampling_params=dict(params), request_id=str(i))
            for i, p in enumerate(prompts)]
    return ray.get(refs)


def _nucleus(row: torch.Tensor, top_p: float) -> torch.Tensor:
    """The row's logits outside the smallest most-probable token set with probability >= top_p set to -inf."""
    probs, order = row.softmax(dim=-1).sort(descending=True)
    size = int((probs.cumsum(dim=-1) < top_p).sum()) + 1
    return torch.full_like(row, float("-inf")).index_fill(0, order[:size], 0.0) + row


def _reference_logprobs(model, prompt, response, temperature=1.0, top_k=None, top_p=1.0):
    """log_softmax(logits / T) of a plain forward on prompt + response at the response tokens, renormalised over
    the top-k tokens and then the top-p nucleus when those are on."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1] / temperature
    if top_k is not None:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1:
        logits = torch.stack([_nucleus(row, top_p) for row in logits])
    return logits.log_softmax(dim=-1).gather(1, torch.tensor(response)[:, None])[:, 0]


def _hf_greedy(model, prompt, max_new_tokens=RESPONSE_LENGTH, eos_token_id=None):
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                         pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_registration_resolves_the_hf_classes():
    register_hf_rollout()
    register_hf_rollout()
    assert RolloutReplicaRegistry.get("hf") is HFReplica
    assert get_rollout_class("hf", "async") is HFServerAdapter


def test_replica_sets_what_verl_reads(replica):
    assert replica.rollout_mode == RolloutMode.HYBRID
    assert replica.servers == [replica.server_handle]
    assert replica.server_address == "hf_server_0"
    assert ray.get_actor("hf_server_0")._actor_id == replica.server_handle._actor_id


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.7, None, 1.0), (1.0, 5, 1.0), (0.8, 50, 0.3)])
def test_logprobs_match_a_plain_forward(policy, replica, temperature, top_k, top_p):
    outs = _generate(replica.server_handle, policy.prompts, temperature=temperature, top_k=top_k or -1, top_p=top_p)
    for prompt, out in zip(policy.prompts, outs):
        ref = _reference_logprobs(policy.model, prompt, out.token_ids, temperature, top_k, top_p)
        assert torch.isfinite(ref).all()  # every sampled token lies inside the reference's support
        torch.testing.assert_close(torch.tensor(out.log_probs), ref, atol=1e-4, rtol=0)


def test_logprobs_only_when_asked(policy, replica):
    out = _generate(replica.server_handle, policy.prompts[:1], logprobs=False)[0]
    assert out.log_probs is None and len(out.token_ids) == RESPONSE_LENGTH


def test_greedy_matches_hf_generate(policy, replica):
    outs = _generate(replica.server_handle, policy.prompts, temperature=0)
    for prompt, out in zip(policy.prompts, outs):
        assert out.token_ids == _hf_greedy(policy.model, prompt)
        ref = _reference_logprobs(policy.model, prompt, out.token_ids)  # greedy: temperature 1 for the log-probs
        torch.testing.assert_close(torch.tensor(out.log_probs), ref, atol=1e-4, rtol=0)
    assert _generate(replica.server_handle, policy.prompts[:1], temperature=0.5, do_sample=False)[0].token_ids == \
        outs[0].token_ids


def _by_prompt(prompts, outs):
    grouped = defaultdict(list)
    for prompt, out in zip(prompts, outs):
        grouped[tuple(prompt)].append(tuple(out.token_ids))
    return {prompt: sorted(samples) for prompt, samples in grouped.items()}


def test_same_samples_whatever_the_order_and_batching(policy, replica):
    server = replica.server_handle
    requests = policy.prompts + [policy.prompts[0]] * 3 + [policy.prompts[2]] * 2
    ray.get(server.set_global_steps.remote(5))
    first = _by_prompt(requests, _generate(server, requests))

    ray.get(server.set_global_steps.remote(6))
    ray.get(server.set_global_steps.remote(5))  # back to step 5: copy counts restart
    shuffled = random.Random(0).sample(requests, len(requests))
    early = _generate(server, shuffled[:3])  # a separate, smaller batch
    time.sleep(0.5)
    second = _by_prompt(shuffled, early + _generate(server, shuffled[3:]))
    assert first == second

    ray.get(server.set_global_steps.remote(6))
    assert _by_prompt(requests, _generate(server, requests)) != first  # another step, other samples


def test_copies_of_one_prompt_differ(policy, replica):
    outs = _generate(replica.server_handle, [policy.prompts[1]] * 4)
    assert len({tuple(out.token_ids) for out in outs}) == 4


def test_max_tokens_and_length_finish(policy, replica):
    short = _generate(replica.server_handle, policy.prompts[:1], max_tokens=3)[0]
    default = _generate(replica.server_handle, policy.prompts[:1])[0]
    assert len(short.token_ids) == len(short.log_probs) == 3
    assert len(default.token_ids) == RESPONSE_LENGTH  # the response_length budget (the agent loop sends none)
    for out in (short, default):
        assert out.stop_reason == "completed" and out.extra_fields["finish_reason"] == "length"


def test_stops_at_eos(policy, tmp_path, ray_cluster):
    """A copy of the policy whose EOS is the third greedy token: decoding stops there, EOS included."""
    prompt = policy.prompts[0]
    greedy = _hf_greedy(policy.model, prompt)
    eos = greedy[2]
    policy.model.save_pretrained(tmp_path)
    config = AutoModelForCausalLM.from_pretrained(tmp_path).config
    config.eos_token_id = eos
    config.save_pretrained(tmp_path)
    (tmp_path / "generation_config.json").unlink()
    server = ray.remote(HFServer).remote(str(tmp_path), RESPONSE_LENGTH, 64, num_threads=1)
    out = _generate(server, [prompt], temperature=0)[0]
    assert out.token_ids == greedy[: greedy.index(eos) + 1] == _hf_greedy(policy.model, prompt, eos_token_id=eos)
    assert out.stop_reason == "completed" and out.extra_fields["finish_reason"] == "stop"
    ray.kill(server)


def test_update_weights_switches_to_a_second_model(policy, replica):
    """Stream a second model's weights through the worker-side adapter; greedy outputs then follow that model."""
    other = _perturbed(policy.path, seed=2)
    adapter = HFServerAdapter(config=_rollout_config(), model_config=SimpleNamespace(path=str(policy.path)),
                              device_mesh=None)
    asyncio.run(adapter.update_weights(iter(other.state_dict().items()), global_steps=3, base_sync_done=True))
    outs = _generate(replica.server_handle, policy.prompts, temperature=0)
    assert [out.token_ids for out in outs] == [_hf_greedy(other, p) for p in policy.prompts]
    assert {out.extra_fields["global_steps"] for out in outs} == {3}
    assert [out.token_ids for out in outs] != [_hf_greedy(policy.model, p) for p in policy.prompts]

    asyncio.run(adapter.update_weights(iter(policy.model.state_dict().items())))  # back; the step is kept
    outs = _generate(replica.server_handle, policy.prompts, temperature=0)
    assert [out.token_ids for out in outs] == [_hf_greedy(policy.model, p) for p in policy.prompts]
    assert outs[0].extra_fields["global_steps"] == 3
