"""An HF-transformers rollout for verl 0.9.1's agent loop on CPU, registered as rollout ``hf``.

verl's v1 trainer generates through rollout *replicas*: a driver-side ``RolloutReplica`` starts a server actor that
answers the agent loop's ``generate`` calls, and a worker-side ``BaseRollout`` (the "server adapter") streams the
actor's weights into that server. This module provides both for a plain transformers causal LM:

- ``HFServer``: a Ray actor holding the model (float32, sdpa). Concurrent ``generate`` calls are gathered for a short
  window into one left-padded batch, decoded by ``decode_batch`` (a sampling loop with a KV cache). ``sleep`` frees
  the weights until the next load, as vLLM's sleep does on a GPU (``CROPI_TRACE`` records both).
- ``HFReplica``: starts one named ``HFServer`` per replica with ``num_cpus=0`` (any init mode; the v1 sync trainer
  uses ``init_hybrid`` with the actor worker group, whose workers only pick the server's node here).
- ``HFServerAdapter``: drains the weight stream into a CPU state dict and loads it into the server (strict).
- ``register_hf_rollout()``: registers the replica as ``"hf"`` and the adapter as ``("hf", "async")``.

Sampling, per request: temperature, top-k, top-p; ``temperature == 0`` or ``do_sample=False`` is greedy. Sampling
stops at EOS (the model's generation/config EOS ids, unless ``rollout.ignore_eos``), at any of the request's
``stop_token_ids``, or after ``max_tokens``: the request's own, else ``min(response_length, prompt_length +
response_length - len(prompt))`` as verl's vLLM server computes it (the agent loop sends none).

Log-probs (fp32) follow verl's default ``rollout.logprobs_mode=processed_logprobs`` as vLLM defines it: the
log-softmax of the distribution the token was drawn from, i.e. logits / temperature (1 for greedy rows), then top-k
and top-p masking. With top-k and top-p off this is the actor's ``log_softmax(logits / temperature)``.
``raw_logprobs`` gives ``log_softmax(logits)``. They are returned only when the request asks (``logprobs``, i.e.
``rollout.calculate_log_probs``), as vLLM does.

Seeds: every sampled request has its own ``torch.Generator`` (Gumbel-max draws), seeded by ``request_seed`` from
(seed, replica rank, the global step of the last weight update, the prompt ids, the request's copy index among this
step's requests with the same prompt). The n copies of a prompt therefore differ, and a rerun gives the same samples
per (prompt, copy index) whatever the arrival order and batching; only float rounding across batch shapes can differ,
which flips a token only at an exact near-tie.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

import ray
import torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from transformers import AutoModelForCausalLM, DynamicCache, PreTrainedModel
from verl.utils import normalize_token_ids
from verl.utils.fs import copy_to_local
from verl.workers.rollout.base import _ROLLOUT_REGISTRY, BaseRollout
from verl.workers.rollout.replica import RolloutReplica, RolloutReplicaRegistry, TokenOutput
from verl.workers.rollout.utils import ensure_async_iterator

from cropi_verl.models.special_tokens import token_rule_of
from cropi_verl.rollout.hf_backend import left_pad
from cropi_verl.utils.trace import trace

ROLLOUT_NAME = "hf"
SERVER_NAME_PREFIX = "hf_server_"
LOGPROBS_MODES = ("processed_logprobs", "raw_logprobs")


@dataclass
class SamplingRequest:
    """One request as the batch decoder sees it."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0  # 0: greedy
    top_k: int = -1  # <= 0: off
    top_p: float = 1.0  # 1: off
    seed: int = 0
    stop_token_ids: frozenset[int] = frozenset()


@dataclass
class SamplingResult:
    """The response tokens, their log-probs, and "stop" (a stop token, included) or "length"."""

    token_ids: list[int] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)
    finish_reason: str = "length"


def request_seed(seed: int, replica_rank: int, global_steps: Optional[int], prompt_ids: list[int], copy: int) -> int:
    """A 63-bit generator seed from the request's identity (stable across processes and runs)."""
    key = repr((seed, replica_rank, global_steps, list(prompt_ids), copy)).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def _last_logits(model: PreTrainedModel, ids, mask, position, cache: DynamicCache) -> torch.Tensor:
    """fp32 logits of each row's last position; extends ``cache``."""
    out = model(
        input_ids=ids, attention_mask=mask, position_ids=position, past_key_values=cache, use_cache=True,
        logits_to_keep=1,
    )
    return out.logits[:, -1].float()


def _mask_top_k_top_p(logits: torch.Tensor, k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Set to -inf the tokens outside each row's top ``k`` and outside its top-``top_p`` probability mass."""
    ordered, order = logits.sort(dim=-1, descending=True)
    rank = torch.arange(logits.shape[-1])
    ordered = ordered.masked_fill(rank[None] >= k[:, None], float("-inf"))
    probs = ordered.softmax(dim=-1)
    outside_p = (probs.cumsum(dim=-1) - probs >= top_p[:, None]) & (top_p[:, None] < 1)
    ordered = ordered.masked_fill(outside_p, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(1, order, ordered)


def processed_logits(logits, temperature, top_k, top_p) -> torch.Tensor:
    """Per row: logits / temperature (1 where greedy), then top-k (<= 0 off) and top-p (1 off) masking."""
    scaled = logits / torch.where(temperature > 0, temperature, 1.0)[:, None]
    vocab = scaled.shape[-1]
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), vocab)
    if bool((k < vocab).any() or (top_p < 1).any()):
        scaled = _mask_top_k_top_p(scaled, k, top_p)
    return scaled


def _gumbel(vocab: int, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Gumbel noise from the row's generator; zeros (argmax) for a greedy row."""
    if generator is None:
        return torch.zeros(vocab)
    return -torch.log(-torch.log(torch.rand(vocab, generator=generator)))


def _sample_step(logits, temperature, top_k, top_p, generators, raw_logprobs: bool):
    """Draw one token per row; returns the tokens and their log-probs (see the module docstring)."""
    logprobs = processed_logits(logits, temperature, top_k, top_p).log_softmax(dim=-1)
    noise = torch.stack([_gumbel(logits.shape[-1], g) for g in generators])
    tokens = (logprobs + noise).argmax(dim=-1)
    source = logits.log_softmax(dim=-1) if raw_logprobs else logprobs
    return tokens, source.gather(1, tokens[:, None])[:, 0]


def _generator(request: SamplingRequest) -> Optional[torch.Generator]:
    """The request's own generator, or None when it is greedy."""
    return torch.Generator().manual_seed(request.seed) if request.temperature > 0 else None


def _append(result: SamplingResult, request: SamplingRequest, stop_ids: set[int], token: int, logprob: float) -> bool:
    """Record one token; True when the request is finished."""
    result.token_ids.append(token)
    result.log_probs.append(logprob)
    if token in stop_ids or token in request.stop_token_ids:
        result.finish_reason = "stop"
        return True
    return len(result.token_ids) >= request.max_tokens


@torch.no_grad()
def decode_batch(
    model: PreTrainedModel, requests: list[SamplingRequest], eos_token_ids: set[int], raw_logprobs: bool = False
) -> list[SamplingResult]:
    """Decode ``requests`` together: a left-padded prefill, then one token per unfinished row per step (KV cache);
    finished rows leave the batch."""
    ids, mask = left_pad([r.prompt_ids for r in requests], pad_id=0)  # masked: the pad id's value is irrelevant
    position = (mask.cumsum(dim=-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    logits = _last_logits(model, ids, mask, position, cache)
    temperature = torch.tensor([r.temperature for r in requests], dtype=torch.float32)
    top_k = torch.tensor([r.top_k for r in requests], dtype=torch.long)
    top_p = torch.tensor([r.top_p for r in requests], dtype=torch.float32)
    generators = [_generator(r) for r in requests]
    results = [SamplingResult() for _ in requests]
    active, position = torch.arange(len(requests)), position[:, -1:]
    while True:
        rows = active.tolist()
        tokens, logps = _sample_step(
            logits, temperature[active], top_k[active], top_p[active], [generators[i] for i in rows], raw_logprobs
        )
        done = [
            _append(results[i], requests[i], eos_token_ids, token, logprob)
            for i, token, logprob in zip(rows, tokens.tolist(), logps.tolist())
        ]
        keep = torch.tensor([j for j, finished in enumerate(done) if not finished], dtype=torch.long)
        if len(keep) == 0:
            return results
        if len(keep) < len(rows):
            cache.batch_select_indices(keep)
            active, mask, position, tokens = active[keep], mask[keep], position[keep], tokens[keep]
        mask = torch.cat([mask, mask.new_ones(len(keep), 1)], dim=1)
        position = position + 1
        logits = _last_logits(model, tokens[:, None], mask, position, cache)


def _load_model(model_path: str, trust_remote_code: bool) -> PreTrainedModel:
    """The causal LM in float32 with sdpa attention (no flash-attention on CPU), in eval mode."""
    model = AutoModelForCausalLM.from_pretrained(
        copy_to_local(model_path), dtype=torch.float32, attn_implementation="sdpa", trust_remote_code=trust_remote_code
    )
    return model.eval()


def _param(params: dict[str, Any], key: str, default):
    """``params[key]``, with None read as ``default``."""
    value = params.get(key)
    return default if value is None else value


class HFServer:
    """The ``hf`` rollout server (an async Ray actor): one causal LM, concurrent requests decoded in batches.

    Args:
        model_path: the HF model directory (``actor_rollout_ref.model.path``).
        response_length, prompt_length: ``rollout.response_length`` / ``prompt_length`` (the data config's
            ``max_response_length`` / ``max_prompt_length``): the default token budget.
        seed, replica_rank: part of every request's seed.
        logprobs_mode: ``processed_logprobs`` (verl's default) or ``raw_logprobs``.
        ignore_eos: keep sampling past EOS.
        num_threads: torch threads (default: all cores; in the sync trainer training and rollout do not overlap).
        max_batch_size: the most requests decoded together.
        batch_window_s, max_wait_s: a batch starts once no request arrived for ``batch_window_s``, or after
            ``max_wait_s``; requests arriving while a batch decodes form the next one.
    """

    def __init__(
        self,
        model_path: str,
        response_length: int,
        prompt_length: int,
        *,
        seed: int = 0,
        replica_rank: int = 0,
        logprobs_mode: str = "processed_logprobs",
        ignore_eos: bool = False,
        trust_remote_code: bool = False,
        num_threads: Optional[int] = None,
        max_batch_size: int = 1024,
        batch_window_s: float = 0.01,
        max_wait_s: float = 0.2,
    ) -> None:
        if logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(f"logprobs_mode {logprobs_mode!r} is not one of {LOGPROBS_MODES}")
        torch.set_num_threads(num_threads or os.cpu_count() or 1)
        self.model = _load_model(model_path, trust_remote_code)
        # the stop ids the offline collection ends responses with (models.special_tokens), so both end alike
        self.eos_token_ids = set() if ignore_eos else set(token_rule_of(copy_to_local(model_path)).stop_ids)
        self.response_length, self.prompt_length = response_length, prompt_length
        self.seed, self.replica_rank = seed, replica_rank
        self.raw_logprobs = logprobs_mode == "raw_logprobs"
        self.max_batch_size, self.batch_window_s, self.max_wait_s = max_batch_size, batch_window_s, max_wait_s
        self.global_steps: Optional[int] = None
        self._copies: Counter[tuple] = Counter()
        self._pending: list[tuple[SamplingRequest, asyncio.Future]] = []
        self._arrived: Optional[asyncio.Event] = None
        self._batcher: Optional[asyncio.Task] = None
        self._model_lock = threading.Lock()
        self._released: dict[str, torch.Size] = {}  # parameter -> shape, while asleep

    async def ready(self) -> bool:
        """Answers once the model is loaded."""
        return True

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data: Optional[list[Any]] = None,
        video_data: Optional[list[Any]] = None,
        audio_data: Optional[list[Any]] = None,
        mm_processor_kwargs: Optional[dict[str, Any]] = None,
        priority: int = 0,
    ) -> TokenOutput:
        """Token-in-token-out generation, called by verl's ``LLMServerClient`` with keyword arguments (the same
        signature as verl's vLLM server). ``request_id`` and ``priority`` do not affect the result."""
        if image_data or video_data or audio_data:
            raise NotImplementedError("the hf rollout is text-only")
        step = self.global_steps
        request = self._request(normalize_token_ids(prompt_ids), sampling_params)
        result = await self._submit(request)
        return TokenOutput(
            token_ids=result.token_ids,
            log_probs=result.log_probs if sampling_params.get("logprobs") else None,
            stop_reason="completed",
            extra_fields={"global_steps": step, "finish_reason": result.finish_reason},
        )

    def _request(self, prompt: list[int], params: dict[str, Any]) -> SamplingRequest:
        """A ``SamplingRequest`` from vLLM-style sampling params; assigns the copy index and seed."""
        if _param(params, "repetition_penalty", 1.0) != 1.0:
            raise NotImplementedError("the hf rollout has no repetition penalty")
        greedy = _param(params, "temperature", 1.0) == 0 or params.get("do_sample") is False
        temperature = 0.0 if greedy else float(_param(params, "temperature", 1.0))
        top_k, top_p = int(_param(params, "top_k", -1)), float(_param(params, "top_p", 1.0))
        # copies are counted per prompt and sampling setting, and not for greedy requests, so that validation
        # (greedy, or its own val_kwargs) between two training steps does not move the training samples' seeds
        key = (tuple(prompt), temperature, top_k, top_p)
        copy = 0 if greedy else self._copies[key]
        if not greedy:
            self._copies[key] += 1
        return SamplingRequest(
            prompt_ids=prompt,
            max_tokens=self._max_tokens(prompt, params),
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=request_seed(self.seed, self.replica_rank, self.global_steps, prompt, copy),
            stop_token_ids=frozenset(_param(params, "stop_token_ids", [])),
        )

    def _max_tokens(self, prompt: list[int], params: dict[str, Any]) -> int:
        """The request's max_tokens (or max_new_tokens), else verl's vLLM default; at least 1."""
        limit = params.get("max_tokens", params.get("max_new_tokens"))
        if limit is None:
            limit = min(self.response_length, self.prompt_length + self.response_length - len(prompt))
        return max(1, int(limit))

    async def _submit(self, request: SamplingRequest) -> SamplingResult:
        """Queue ``request`` for the batcher and wait for its result."""
        if self._arrived is None:
            self._arrived = asyncio.Event()
            self._batcher = asyncio.get_running_loop().create_task(self._batch_loop())
        future = asyncio.get_running_loop().create_future()
        self._pending.append((request, future))
        self._arrived.set()
        return await future

    async def _batch_loop(self) -> None:
        """Forever: wait for requests, let the window fill, decode one batch in a thread."""
        while True:
            await self._arrived.wait()
            await self._fill_window()
            batch = self._pending[: self.max_batch_size]
            del self._pending[: len(batch)]
            if not self._pending:
                self._arrived.clear()
            await self._run(batch)

    async def _fill_window(self) -> None:
        """Return once no request arrived for ``batch_window_s``, the batch is full, or ``max_wait_s`` passed."""
        loop = asyncio.get_running_loop()
        deadline, seen = loop.time() + self.max_wait_s, 0
        while len(self._pending) > seen and len(self._pending) < self.max_batch_size and loop.time() < deadline:
            seen = len(self._pending)
            await asyncio.sleep(self.batch_window_s)

    async def _run(self, batch: list[tuple[SamplingRequest, asyncio.Future]]) -> None:
        """Decode ``batch`` off the event loop and resolve its futures (with the error, if decoding fails)."""
        futures = [future for _, future in batch]
        try:
            results = await asyncio.to_thread(self._decode, [request for request, _ in batch])
        except Exception as error:  # noqa: BLE001 - handed to every waiting caller
            for future in futures:
                if not future.done():
                    future.set_exception(error)
            return
        for future, result in zip(futures, results):
            if not future.done():
                future.set_result(result)

    def _decode(self, requests: list[SamplingRequest]) -> list[SamplingResult]:
        with self._model_lock:
            if self._released:
                raise RuntimeError("the hf rollout server is asleep (weights released): load weights first")
            return decode_batch(self.model, requests, self.eos_token_ids, self.raw_logprobs)

    async def load_weights(self, state_dict: dict[str, torch.Tensor], global_steps: Optional[int] = None) -> None:
        """Load a full state dict (strict; waits for a running batch), then record ``global_steps`` if given."""
        await asyncio.to_thread(self._load_state_dict, state_dict)
        if global_steps is not None:
            await self.set_global_steps(global_steps)

    def _load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        with self._model_lock:
            for name, param in self.model.named_parameters():
                if name in self._released:
                    param.data = torch.empty(self._released[name], dtype=param.dtype)
            self._released = {}
            self.model.load_state_dict(state_dict, strict=True)
        trace("replica_weights", held=True, replica=self.replica_rank, global_steps=self.global_steps)

    def _release_weights(self) -> None:
        """Free every parameter's storage (shapes kept for the next load), as vLLM's sleep frees GPU weights."""
        with self._model_lock:
            for name, param in self.model.named_parameters():
                self._released.setdefault(name, param.shape)
                param.data = torch.empty(0, dtype=param.dtype)
        trace("replica_weights", held=False, replica=self.replica_rank, global_steps=self.global_steps)

    async def set_global_steps(self, global_steps: Optional[int]) -> None:
        """Record the weights' version; a new version restarts the per-prompt copy counts (so seeds repeat per step)."""
        if global_steps != self.global_steps:
            self._copies.clear()
        self.global_steps = global_steps

    # The control calls verl makes on every rollout server. ``sleep`` frees the weights as vLLM does on a GPU (the
    # sync trainer sleeps the replicas after sampling and reloads them through ``load_weights``); the KV cache lives
    # only while one batch decodes. A running batch cannot be interrupted; a weight load waits for it behind the
    # model lock, so abort reports nothing aborted.

    async def wake_up(self, tags: Optional[list[str]] = None) -> None:
        """No-op: the weights come back with the next ``load_weights`` (verl's sync trainer wakes replicas so)."""

    async def sleep(self) -> None:
        """Free the weights (``_release_weights``); generating before the next ``load_weights`` is an error."""
        await asyncio.to_thread(self._release_weights)

    async def clear_kv_cache(self) -> None:
        """No-op (see above)."""

    async def release_kv_cache(self) -> None:
        """No-op (see above)."""

    async def resume_kv_cache(self) -> None:
        """No-op (see above)."""

    async def abort_all_requests(self, reset_prefix_cache: bool = True, reject_request: bool = False) -> dict:
        """Nothing is aborted (see above)."""
        return {"aborted_count": 0, "request_ids": []}

    async def abort_request(self, request_id: str, reset_prefix_cache: bool = True) -> dict:
        """Nothing is aborted (see above)."""
        return {"aborted": False, "request_id": request_id}

    async def resume_generation(self) -> None:
        """No-op (see above)."""

    async def start_profile(self, **kwargs) -> None:
        """No-op: no engine profiler."""

    async def stop_profile(self) -> None:
        """No-op: no engine profiler."""


def hf_server_kwargs(config, model_config, replica_rank: int) -> dict[str, Any]:
    """``HFServer`` arguments from the rollout config and the model config (``model_config.path``); extra ones from
    ``rollout.custom.hf_server`` (e.g. ``batch_window_s``, ``num_threads``)."""
    custom = dict((config.custom or {}).get("hf_server") or {})
    return {
        "model_path": model_config.path,
        "response_length": config.response_length,
        "prompt_length": config.prompt_length,
        "seed": config.seed,
        "replica_rank": replica_rank,
        "logprobs_mode": config.logprobs_mode,
        "ignore_eos": config.ignore_eos,
        "trust_remote_code": bool(getattr(model_config, "trust_remote_code", False)),
        "max_batch_size": config.max_num_seqs,
        **custom,
    }


class HFReplica(RolloutReplica):
    """The ``hf`` rollout replica: one ``HFServer`` actor, named ``hf_server_<replica rank>`` (the name is also its
    load-balancer address), on the node of the replica's first worker."""

    async def launch_servers(self) -> None:
        """Start the server actor (``num_cpus=0``: it shares the workers' CPUs) and wait for its model."""
        name = self._server_name()
        options: dict[str, Any] = {"name": name, "num_cpus": 0, "max_concurrency": self.max_concurrency}
        if self.workers:
            node_id = await self.workers[0].__ray_call__.remote(lambda worker: ray.get_runtime_context().get_node_id())
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node_id, soft=True)
        server = ray.remote(HFServer).options(**options).remote(
            **hf_server_kwargs(self.config, self.model_config, self.replica_rank)
        )
        await server.ready.remote()
        self.servers = [server]
        self._server_handle = server
        self._server_address = name

    def _server_name(self) -> str:
        role = "reward_" if self.is_reward_model else "teacher_" if self.is_teacher_model else ""
        return f"{SERVER_NAME_PREFIX}{role}{self.replica_rank}{self.name_suffix}"


async def _drain_weights(weights, keep: bool) -> dict[str, torch.Tensor]:
    """Consume the whole (name, tensor) stream; every rank must, since producing a tensor may be a collective
    (FSDP all-gather). Returns CPU tensors when ``keep``, else an empty dict."""
    state_dict = {}
    async for name, tensor in ensure_async_iterator(weights):
        if keep:
            state_dict[name] = tensor.detach().cpu()
    return state_dict


class HFServerAdapter(BaseRollout):
    """The worker-side ``hf`` rollout: sends the actor's weights to its replica's ``HFServer``.

    The replica's leader rank (rank % replica size == 0) sends; all ranks drain the weight stream.
    """

    def __init__(self, config, model_config, device_mesh, replica_rank: int = -1) -> None:
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ.get("RANK", "0"))
        replica_size = (
            self.config.tensor_model_parallel_size
            * self.config.data_parallel_size
            * self.config.pipeline_model_parallel_size
        )
        self.replica_rank = rank // replica_size if replica_rank == -1 else replica_rank
        self.is_leader_rank = rank % replica_size == 0
        self._server: Optional[ray.actor.ActorHandle] = None

    def _server_handle(self) -> ray.actor.ActorHandle:
        """The server actor, looked up by name on first use (it starts after the workers)."""
        if self._server is None:
            self._server = ray.get_actor(f"{SERVER_NAME_PREFIX}{self.replica_rank}")
        return self._server

    async def resume(self, tags: list[str]) -> None:
        """No-op: the server gets its weights back through ``update_weights`` (``HFServer.sleep`` freed them), and its
        KV cache lives only while a batch decodes."""

    async def release(self) -> None:
        """No-op: verl's sleep of the replica (``HFServer.sleep``) frees the weights; see ``resume``."""

    async def update_weights(
        self, weights, global_steps: Optional[int] = None, wire_format: str = "named_tensors", **kwargs
    ) -> None:
        """Load the streamed full ``(name, tensor)`` weights into the server and record ``global_steps`` (None keeps
        the recorded step). ``kwargs`` (``base_sync_done`` etc.) are accepted; unmerged LoRA adapters are not."""
        if wire_format != "named_tensors":
            raise NotImplementedError(f"the hf rollout takes full named tensors, not {wire_format!r}")
        if kwargs.get("peft_config") is not None:
            raise NotImplementedError("the hf rollout needs merged LoRA weights: set model.lora.merge=True")
        state_dict = await _drain_weights(weights, keep=self.is_leader_rank)
        if self.is_leader_rank:
            await self._server_handle().load_weights.remote(state_dict, global_steps)


def _hf_replica_class() -> type[RolloutReplica]:
    return HFReplica


def register_hf_rollout() -> None:
    """Register the ``hf`` rollout with verl (idempotent): ``HFReplica`` in ``RolloutReplicaRegistry`` and
    ``HFServerAdapter`` in the worker-side rollout registry under ``("hf", "async")``."""
    RolloutReplicaRegistry.register(ROLLOUT_NAME, _hf_replica_class)
    _ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = f"{__name__}.{HFServerAdapter.__name__}"
