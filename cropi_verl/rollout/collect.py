"""Resumable, sharded offline rollout collection (HF backend on CPU, vLLM on GPU: ``rollout/vllm_backend.py``) into
one record format. Both backends store beta's log-probs by the influence pass's forward
(``rollout.hf_backend.behaviour_logprobs``) with the HF model in ``logprob_dtype``, which must be the influence
workers' dtype (``cropi.workers.dtype``; scripts/preflight.py checks it) for rho to be 1 at beta's weights.

Output directory::

    manifest.json            the collection config (model, sampling, seed, input file, shard size, logprob dtype)
    shards/shard_00000.parquet ...   records of input rows [j*S, (j+1)*S), each written atomically
    rollouts.parquet         all records in input order (written last, atomically)

Shard j samples with seed ``seed * 1_000_003 + j``, so a rerun skips finished shards and reproduces the same
records; a shard that cannot be read back whole, or holds the wrong prompt ids, is logged and redone. A
manifest from a different config is an error, never a silent mix.

Prompts whose chat-templated length exceeds ``max_prompt_tokens`` are skipped (not truncated: a cut
question is a different question), counted, and listed in ``manifest.json`` under ``skipped_long_prompts``.
With ``max_prompts``, only that many of the others, drawn with ``seed`` (in file order), are collected.

With ``adaptive_first`` = k0 (2 <= k0 <= n; an adaptive collection, AR3PO's idea), each prompt of a shard gets k0
responses first; a prompt whose k0 rewards are all finite and equal keeps those k0 only (it would most often be
zero-advantage at n: ``scripts/adaptive_collection.py`` measures what is missed), the others get n - k0 more, drawn
with the shard's second seed. A first draw with mixed rewards stays mixed, so no prompt is kept wrongly. The
manifest records ``adaptive``: the prompts stopped and the responses drawn against n per prompt.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
from tqdm.auto import tqdm

from cropi_verl.data.verl_format import read_verl_parquet, row_ids
from cropi_verl.models.special_tokens import model_token_rule, token_rule_of
from cropi_verl.rewards import score_or_nan
from cropi_verl.rollout.records import RECORD_COLUMNS, Response, make_row
from cropi_verl.utils.atomic import atomic_write_json, atomic_write_parquet
from cropi_verl.utils.draw import seeded_subset
from cropi_verl.utils.faults import kill_point
from cropi_verl.utils.identity import file_digest, model_digest
from cropi_verl.utils.run_lock import run_lock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CollectConfig:
    model: str
    input: str
    backend: str = "hf"  # hf | vllm
    n: int = 8
    temperature: float = 0.5
    top_p: float = 1.0
    max_new_tokens: int = 2048
    max_prompt_tokens: int = 1024
    seed: int = 0
    shard_size: int = 64
    batch_size: int = 16  # prompts per generate call (hf)
    tensor_parallel_size: int = 1  # vllm
    max_prompts: int | None = None  # collect a seeded draw of this many prompts (None: all)
    logprob_dtype: str = "float32"  # beta's log-probs recomputed by the HF model in this dtype (the workers' dtype)
    adaptive_first: int | None = None  # k0: k0 responses first, n - k0 more only where they differ (None: n at once)

    def __post_init__(self) -> None:
        if problem := adaptive_first_problem(self.adaptive_first, self.n):
            raise ValueError(problem)


def adaptive_first_problem(first: int | None, n: int) -> str | None:
    """Why ``adaptive_first`` cannot be the first draw of an ``n``-response collection; None when it can."""
    if first is None or (isinstance(first, int) and not isinstance(first, bool) and 2 <= first <= n):
        return None
    return f"adaptive_first={first!r}: expected null or an integer 2 .. n={n} (a first draw of responses per prompt)"


# A backend samples one shard: (token ids of each prompt, seed[, n]) -> n Responses per prompt (n: cfg.n unless given).
Backend = Callable[..., list[list[Response]]]
SECOND_DRAW_SEED = 7_777_777_777  # added to a shard's seed for an adaptive collection's second draw
LOGPROB_TOKENS = 16384  # padded tokens per forward when recomputing beta's log-probs (bounds the activations)


MAX_VERIFIER_FAILURES = 0.01  # share of a shard's responses whose reward the verifier may fail to decide


class RolloutManifestMismatch(ValueError):
    pass


class VerifierFailures(ValueError):
    """Too many responses of a shard whose reward the verifier could not decide."""


def _manifest(cfg: CollectConfig) -> dict:
    """The collection's settings, the record format, and what it samples from by content (``utils.identity``: the
    prompts file's bytes, the model's weights and tokenizer; those that exist yet: a check before the inputs are
    made compares the settings, and the collection itself all of it)."""
    inputs = {}
    if Path(cfg.input).is_file():
        inputs["input"] = file_digest(cfg.input)
    if Path(cfg.model).expanduser().is_dir():  # (a hub id is fixed by the id in the config)
        inputs["model"] = model_digest(cfg.model)
    return {"config": asdict(cfg), "format": list(RECORD_COLUMNS), "inputs": inputs}


def manifest_mismatch(out: str | Path, cfg: CollectConfig) -> str | None:
    """Why the rollouts under ``out`` cannot be resumed or reused with ``cfg`` (its ``manifest.json`` records another
    config or record format); None when they can, or when there are none. The prompts file and the model are
    compared by content where both sides know it, so the same files named by another path are the same inputs.
    Reads only."""
    path = Path(out) / "manifest.json"
    if not path.is_file():
        return None
    want = _manifest(cfg)
    have = json.loads(path.read_text())
    recorded = have.get("inputs", {})  # (a manifest written before digests were recorded holds none)
    by_content = {k for k in want["inputs"] if k in recorded}  # where these lie (a relative path, a move) is moot
    diff = [k for k in want["config"] if k not in by_content and have.get("config", {}).get(k) != want["config"][k]]
    diff += [f"the {k}'s content" for k in by_content if recorded[k] != want["inputs"][k]]
    if diff or have.get("format") != want["format"]:
        return f"{path}: rollouts were collected with a different config ({', '.join(diff) or 'format'})"
    return None


def other_model_problem(rollouts: str | Path, model: str) -> str | None:
    """Why the rollouts file ``rollouts`` was not collected from ``model`` (beta must be the initial policy; the
    caller names the file), by the ``manifest.json`` beside it: the model's content digest where both are known (the same weights under another
    path are the same model; other weights under the same path are not), else the recorded path or id. None when
    it was, or when there is no manifest (a file made by hand)."""
    manifest = Path(rollouts).with_name("manifest.json")
    if not manifest.is_file():
        return None
    have = json.loads(manifest.read_text())
    collected, digest = have.get("config", {}).get("model"), have.get("inputs", {}).get("model")
    if digest is not None and Path(model).expanduser().is_dir():
        same = digest == model_digest(model)
    else:
        same = not collected or collected == model or \
            Path(collected).expanduser().resolve() == Path(model).expanduser().resolve()
    return None if same else (f"collected from {collected} ({manifest}), another model than {model} (by content): "
                              "the offline rollouts must come from the initial policy (beta)")


def _open_manifest(out: Path, cfg: CollectConfig) -> dict:
    """The manifest under ``out``, or the one ``cfg`` gets (written with the first shard, so that a collection that
    fails before any shard leaves nothing behind); refused if it records another config."""
    problem = manifest_mismatch(out, cfg)
    if problem:
        raise RolloutManifestMismatch(f"{problem}; use another output directory or delete it")
    path = out / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else _manifest(cfg)


def _read_shard(path: Path, expected_ids: list[int]) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        df = pd.read_parquet(path)
        if list(df["prompt_id"]) != expected_ids:
            raise ValueError("prompt ids differ from the input shard")
        return df
    except Exception as e:  # a corrupt or partial shard is redone, never read
        log.warning("%s: unreadable or partial shard (%s); recollecting it", path, e)
        return None


def _scored(rec, group: list[Response]) -> list[float]:
    return [score_or_nan(rec["data_source"], r.text, rec["reward_model"]["ground_truth"], rec["extra_info"])
            for r in group]


def _all_equal(rewards: list[float]) -> bool:
    return all(math.isfinite(x) for x in rewards) and max(rewards) == min(rewards)


def _sample_shard(cfg: CollectConfig, backend: Backend, recs: list, prompt_ids: list[list[int]], seed: int):
    """(responses, rewards) per prompt: all ``cfg.n`` at once, or the adaptive collection's two draws."""
    if cfg.adaptive_first is None:
        gens = backend(prompt_ids, seed)
        return gens, [_scored(rec, g) for rec, g in zip(recs, gens)]
    gens = [list(g) for g in backend(prompt_ids, seed, cfg.adaptive_first)]
    rewards = [_scored(rec, g) for rec, g in zip(recs, gens)]
    mixed = [i for i, r in enumerate(rewards) if not _all_equal(r)]
    if mixed and cfg.n > cfg.adaptive_first:
        more = backend([prompt_ids[i] for i in mixed], seed + SECOND_DRAW_SEED, cfg.n - cfg.adaptive_first)
        for i, extra in zip(mixed, more):
            gens[i] += extra
            rewards[i] += _scored(recs[i], extra)
    return gens, rewards


def _adaptive_counts(cfg: CollectConfig, merged: pd.DataFrame) -> dict:
    """What the adaptive collection stopped and drew, against ``n`` responses for every prompt."""
    drawn = [len(r) for r in merged["response_ids"]]
    stopped = sum(d < cfg.n for d in drawn)
    out = {"first": cfg.adaptive_first, "stopped_prompts": stopped, "prompts": len(drawn),
           "responses": sum(drawn), "responses_at_n": cfg.n * len(drawn)}
    log.info("adaptive collection: %d of %d prompts stopped after %d responses (rewards all equal); %d of %d "
             "responses drawn", stopped, len(drawn), cfg.adaptive_first, out["responses"], out["responses_at_n"])
    return out


def collect_rollouts(cfg: CollectConfig, out_dir: str | Path, backend: Backend, tokenizer, progress: bool = True,
                     max_verifier_failures: float = MAX_VERIFIER_FAILURES) -> Path:
    """Collect ``cfg.n`` responses per prompt of ``cfg.input`` into ``out_dir``; returns the rollouts parquet.

    A response the verifier fails on (``rewards.VerifierError``) gets a NaN reward (dropped and counted like any
    non-finite reward); a shard in which more than ``max_verifier_failures`` of the responses fail is not written,
    and the collection stops with a ``VerifierFailures`` error (a rerun collects that shard again)."""
    out = Path(out_dir)
    prompts = read_verl_parquet(cfg.input)  # bad input fails before anything is written
    with run_lock(out, f"a collection of {cfg.input}"):  # one collection per directory at a time
        return _collect(cfg, out, prompts, backend, tokenizer, progress, max_verifier_failures)


def _collect(cfg: CollectConfig, out: Path, prompts: pd.DataFrame, backend: Backend, tokenizer, progress: bool,
             max_verifier_failures: float) -> Path:
    """``collect_rollouts`` once its input is read and its directory locked."""
    tokens = token_rule_of(cfg.model, tokenizer)  # the stop ids that end a response (models.special_tokens)
    manifest = _open_manifest(out, cfg)
    ids = row_ids(prompts)
    chat_ids = [
        tokenizer(tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True),
                  add_special_tokens=False)["input_ids"]
        for p in prompts["prompt"]
    ]
    keep = [i for i, c in enumerate(chat_ids) if len(c) <= cfg.max_prompt_tokens]
    if cfg.max_prompts is not None and len(keep) > cfg.max_prompts:
        keep = [keep[i] for i in seeded_subset(len(keep), cfg.max_prompts, cfg.seed)]
    skipped = [ids[i] for i in range(len(ids)) if len(chat_ids[i]) > cfg.max_prompt_tokens]
    if skipped:
        log.warning("%d prompts longer than max_prompt_tokens=%d skipped (first ids: %s)",
                    len(skipped), cfg.max_prompt_tokens, skipped[:5])
    n_shards = (len(keep) + cfg.shard_size - 1) // cfg.shard_size
    shards = [keep[j * cfg.shard_size : (j + 1) * cfg.shard_size] for j in range(n_shards)]
    frames: list[pd.DataFrame | None] = [
        _read_shard(out / "shards" / f"shard_{j:05d}.parquet", [ids[i] for i in rows]) for j, rows in enumerate(shards)
    ]
    todo = [j for j, f in enumerate(frames) if f is None]
    bar = tqdm(total=sum(len(shards[j]) for j in todo), desc=f"rollouts ({cfg.backend})", unit="prompt",
               disable=not progress)
    t0, n_tokens = time.time(), 0
    for j in todo:
        rows = shards[j]
        recs = [prompts.iloc[i] for i in rows]
        gens, scores = _sample_shard(cfg, backend, recs, [chat_ids[i] for i in rows], cfg.seed * 1_000_003 + j)
        records, failed = [], 0
        for i, rec, group, rewards in zip(rows, recs, gens, scores):
            failed += sum(math.isnan(x) for x in rewards)
            records.append(make_row(ids[i], rec["data_source"], rec["extra_info"].get("split", ""),
                                    rec["reward_model"]["ground_truth"], chat_ids[i], group, rewards, tokens.stop_ids))
            n_tokens += sum(len(r.token_ids) for r in group)
        scored = sum(len(g) for g in gens)
        if failed > max_verifier_failures * scored:
            raise VerifierFailures(f"{out}: shard {j}: the verifier (math-verify) failed on {failed} of {scored} "
                                   f"responses, more than the share {max_verifier_failures} allowed; the shard is not "
                                   "written (finished shards are kept): check the verifier, then rerun to resume")
        frames[j] = pd.DataFrame(records, columns=list(RECORD_COLUMNS))
        if not (out / "manifest.json").is_file():
            atomic_write_json(manifest, out / "manifest.json")
        atomic_write_parquet(frames[j], out / "shards" / f"shard_{j:05d}.parquet")
        kill_point("rollout_shard")
        bar.update(len(rows))
        dt = max(time.time() - t0, 1e-9)
        bar.set_postfix(prompts_s=f"{bar.n / dt:.2f}", tokens_s=f"{n_tokens / dt:.0f}")
    bar.close()
    merged = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(RECORD_COLUMNS))
    n_flagged = sum(f != "" for flags in merged["flag"] for f in flags)
    if n_flagged:
        log.warning("%d responses flagged (empty generation or non-finite reward); they are never scored", n_flagged)
    manifest |= {"skipped_long_prompts": skipped, "n_prompts": len(merged), "n_flagged_responses": n_flagged}
    if cfg.adaptive_first is not None:
        manifest["adaptive"] = _adaptive_counts(cfg, merged)
    atomic_write_json(manifest, out / "manifest.json")
    return atomic_write_parquet(merged, out / "rollouts.parquet")


def hf_backend(model, tokenizer, cfg: CollectConfig, logprob_tokens: int = LOGPROB_TOKENS) -> Backend:
    """``model.generate`` sampling (left-padded batches), then beta's log-probs by ``with_behaviour_logprobs``
    with ``model`` in ``cfg.logprob_dtype`` (forward batches of at most ``logprob_tokens`` padded tokens)."""
    from cropi_verl.rollout.hf_backend import in_dtype, sample_chat, with_behaviour_logprobs

    scorer = in_dtype(model, cfg.logprob_dtype)

    def run(prompt_ids: Sequence[list[int]], seed: int, n: int | None = None) -> list[list[Response]]:
        groups = []
        for b in range(0, len(prompt_ids), cfg.batch_size):
            gens = sample_chat(model, tokenizer, prompt_ids[b : b + cfg.batch_size], n or cfg.n, cfg.temperature,
                               cfg.top_p, cfg.max_new_tokens, seed * 7919 + b)
            groups += [[Response(g.response_ids, tokenizer.decode(g.response_ids, skip_special_tokens=True), None,
                                 g.truncated) for g in group] for group in gens]
        return with_behaviour_logprobs(scorer, prompt_ids, groups, model_token_rule(model, tokenizer).pad_id,
                                       logprob_tokens)

    return run

