#!/usr/bin/env python
"""POPI gradient pass: prompts/s and peak memory, streamed projection vs the naive baseline.

``streamed``: ``popi_features`` with its defaults (the prompt encoded once into a KV cache, identical responses
merged, small gradients staged and projected together, each projected as soon as backward produces it).
``streamed_plain``: ``popi_features`` with those three savings off (every response re-encodes the prompt, one
projection call per parameter tensor). ``streamed_compiled``: ``streamed`` with the decoder's forward under
``torch.compile(dynamic=True)`` (its compile time is the warm-up's, reported apart; its features are checked
against the eager pass). ``naive``: backward into ``.grad``, concatenate the full flat gradient,
project it. Two batched alternatives, not used by the pass, measure what batching prompts could gain:
``packed_sum`` packs each prompt and its distinct responses into one sequence (``packed_batch``), runs
``--prompt-batch`` prompts per forward/backward and projects only their *summed* gradient (a floor: it is not
per-prompt); ``packed_vmap`` gets the per-prompt gradients of the same batches with ``torch.func``
(``vmap(grad(loss))`` over prompts) and projects them; its features are checked against ``streamed``. All on a
random-init Qwen2 (``--model tiny``: the tiny policy's shape; ``--model qwen2.5-1.5b``:
Qwen2.5-1.5B's config, for a GPU) with synthetic offline rollouts of K responses x T tokens after a P-token
prompt, ``--distinct`` of the K responses distinct (the rest repeat them, as a confident policy's samples do). Each
mode runs in its own subprocess so peak memory (``ru_maxrss`` on CPU, ``max_memory_allocated`` on GPU) is its own.
The last line is one JSON object (ratios against ``naive`` measured in the same run).

    python scripts/bench_gradients.py [--model tiny] [--prompts 32] [--k-resp 8] [--tokens 32] [--distinct 8]
                                      [--prompt-batch 8]

``--lengths realistic`` measures padding instead: per prompt ``--k-resp`` responses whose lengths are drawn from a
log-normal (median ``--median-frac`` x ``--cap``, sigma 0.8, cut at the cap) with a share ``--at-cap`` set to the cap
(truncated generations), after prompts of 64-256 tokens (GSM8K, MATH and DeepScaleR questions with a chat template).
It runs ``popi_features`` without the prompt cache three times, rows right-padded, rows packed and rows packed with
the prompt once (``PopiConfig.pack``: false, true, "prompt_once"), in turn, in one process, and reports each layout's
positions over real tokens (real: every response after its own prompt), s/prompt (the fastest of ``--repeats``), the
padded s/prompt over each packed one, and the packed features' largest relative difference from the padded ones.

    python scripts/bench_gradients.py --lengths realistic [--model medium] [--cap 512] [--prompts 16]

With ``--model`` a preset (smollm2-135m) or a local HF folder, the realistic mode runs that model's weights in fp32
(its shape read from its config), and with ``--rollouts`` (a rollouts parquet, e.g. the demo's
``<output_dir>/rollouts/train/rollouts.parquet``) on the first ``--prompts`` scorable prompts' real prompts and
responses instead of drawn ones (tokens/s then counts their real tokens).

    python scripts/bench_gradients.py --lengths realistic --model smollm2-135m --rollouts RUN/rollouts/train/rollouts.parquet
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time

import torch

from cropi_verl.influence.gradients import PopiConfig
from cropi_verl.utils.cli import HelpFormatter, one_line_errors

MODELS = {
    "tiny": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=400),
    "medium": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=2, num_attention_heads=8,
                   num_key_value_heads=2, vocab_size=4096),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064),
}

LAYOUTS = {"padded": False, "packed": True, "prompt_once": "prompt_once"}  # --lengths realistic: PopiConfig.pack
MODES = ["naive", "streamed_plain", "streamed", "streamed_compiled", "packed_sum", "packed_vmap"]


def packed_batch(prompts: list, pad_id: int, device: str) -> tuple[dict, dict]:
    """Prompt b with distinct rows y_1..y_R as one sequence s_b, y_1[:-1], ..., y_R[:-1] (right-padded to L): row
    tokens attend to the prompt and causally to their own row (a tree mask ``[B, 1, L, L]``), positions restart at
    |s_b| for every row, padding attends to itself. Returns the model inputs and the loss tensors ``[B, T]``
    (``pos``: where each response token is predicted, ``targets``, ``ref``, ``coef``, ``mask``) and ``k`` ``[B]``."""
    from cropi_verl.influence.gradients import group_advantages, response_rows

    seqs, losses = [], []
    for pr in prompts:
        n_prompt = len(pr.prompt_ids)
        ids, pos, seg, at = list(pr.prompt_ids), list(range(n_prompt)), [0] * n_prompt, []
        rows = response_rows(pr, group_advantages(pr.rewards, PopiConfig.adv_eps).tolist(), merge=True)
        for r, row in enumerate(rows, 1):
            at += [n_prompt - 1] + list(range(len(ids), len(ids) + len(row.tokens) - 1))
            ids += row.tokens[:-1]
            pos += list(range(n_prompt, n_prompt + len(row.tokens) - 1))
            seg += [r] * (len(row.tokens) - 1)
        seqs.append((ids, pos, seg))
        losses.append((at, [t for row in rows for t in row.tokens], [x for row in rows for x in row.ref],
                       [x for row in rows for x in row.coef]))
    b, width, t_max = len(prompts), max(len(s[0]) for s in seqs), max(len(x[0]) for x in losses)
    ids, pos, seg = torch.full((b, width), pad_id), torch.zeros(b, width, dtype=torch.long), torch.full((b, width), -1)
    at, targets = torch.zeros(b, t_max, dtype=torch.long), torch.zeros(b, t_max, dtype=torch.long)
    ref, coef, mask = torch.zeros(b, t_max), torch.zeros(b, t_max), torch.zeros(b, t_max)
    for i, ((s_ids, s_pos, s_seg), (l_at, l_tg, l_ref, l_coef)) in enumerate(zip(seqs, losses)):
        n, t = len(s_ids), len(l_at)
        ids[i, :n], pos[i, :n], seg[i, :n] = torch.tensor(s_ids), torch.tensor(s_pos), torch.tensor(s_seg)
        at[i, :t], targets[i, :t] = torch.tensor(l_at), torch.tensor(l_tg)
        ref[i, :t], coef[i, :t], mask[i, :t] = torch.tensor(l_ref), torch.tensor(l_coef), 1
    q = torch.arange(width)
    sq, sk = seg[:, :, None], seg[:, None, :]
    tree = (q[:, None] >= q[None, :]) & ((sk == 0) | (sk == sq)) & (sk >= 0) | torch.eye(width, dtype=torch.bool)
    k = torch.tensor([float(len(pr.responses)) for pr in prompts])
    inputs = {"input_ids": ids, "position_ids": pos, "attention_mask": tree[:, None]}
    loss = {"pos": at, "targets": targets, "ref": ref, "coef": coef, "mask": mask, "k": k}
    return ({n: v.to(device) for n, v in inputs.items()}, {n: v.to(device) for n, v in loss.items()})


def packed_loss(logits: torch.Tensor, pos, targets, ref, coef, mask, k) -> torch.Tensor:
    """The POPI loss of one packed prompt from its logits ``[L, V]`` (the loss tensors of ``packed_batch``)."""
    from cropi_verl.influence.gradients import popi_loss

    logp = torch.log_softmax(logits[pos].float(), -1).gather(-1, targets[..., None]).squeeze(-1) * mask
    return popi_loss(logp[None], ref[None], mask[None], coef[None], k, None)


def run_packed(model, prompts: list, proj, prompt_batch: int, per_prompt: bool) -> torch.Tensor | None:
    """``packed_vmap`` (``per_prompt``: features ``[N, k]``) or ``packed_sum`` (summed gradients only: None)."""
    from torch.func import functional_call, grad, vmap

    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss_one(params, inputs, loss):
        logits = functional_call(model, params, (), {n: v[None] for n, v in inputs.items()}).logits[0]
        return packed_loss(logits, **loss)

    per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0))
    feats = []
    for s in range(0, len(prompts), prompt_batch):
        chunk = prompts[s : s + prompt_batch]
        inputs, loss = packed_batch(chunk, 0, next(model.parameters()).device)
        if per_prompt:
            g = per_sample(params, inputs, loss)
            feats.append(proj.project(torch.cat([g[n].reshape(len(chunk), -1).float() for n in params], 1)))
            continue
        logits = model(**inputs).logits
        sum(packed_loss(logits[i], **{n: v[i] for n, v in loss.items()}) for i in range(len(chunk))).backward()
        proj.project(torch.cat([p.grad.reshape(-1).float() for p in model.parameters()]))
        model.zero_grad(set_to_none=True)
    return torch.cat(feats) if per_prompt else None


def run_mode(args) -> dict:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from cropi_verl.influence.gradients import PromptRollouts, parameter_offsets, popi_features
    from cropi_verl.influence.projection import make_projector

    dev = args.device
    torch.manual_seed(0)
    cfg = Qwen2Config(**MODELS[args.model], max_position_embeddings=4096, tie_word_embeddings=True)
    with torch.device(dev):  # initialised where it runs (a 1.5B init on the CPU alone takes half a minute)
        model = Qwen2ForCausalLM(cfg).to(torch.bfloat16 if dev == "cuda" else torch.float32)
    _, dim = parameter_offsets(model)
    proj = make_projector("sparse_jl", dim, args.k)
    rng = random.Random(0)
    V = cfg.vocab_size
    prompts = []
    for i in range(args.prompts):
        distinct = [[rng.randrange(V) for _ in range(args.tokens)] for _ in range(min(args.distinct, args.k_resp))]
        responses = [distinct[j % len(distinct)] for j in range(args.k_resp)]
        prompts.append(PromptRollouts(i, [rng.randrange(V) for _ in range(args.prompt_tokens)], responses,
                                      [[-2.0] * args.tokens for _ in range(args.k_resp)],
                                      [float(j % len(distinct) % 2) for j in range(args.k_resp)]))

    def run(batch: list):
        if args.mode.startswith("packed"):
            return run_packed(model, batch, proj, args.prompt_batch, per_prompt=args.mode == "packed_vmap")
        if args.mode in ("streamed", "streamed_compiled"):
            res = popi_features(model, batch, proj, 0, PopiConfig(micro_batch_tokens=args.micro_batch_tokens,
                                                                  share_prompt=args.share_prompt,
                                                                  stream_buffer=args.stream_buffer))
            return res.features if args.mode == "streamed_compiled" else None
        elif args.mode == "streamed_plain":
            popi_features(model, batch, proj, 0, PopiConfig(micro_batch_tokens=args.micro_batch_tokens,
                                                            share_prompt=False, merge_duplicates=False,
                                                            stream_buffer=1))
        else:
            from cropi_verl.influence.gradients import group_advantages, popi_loss, response_logprobs, response_rows

            for pr in batch:
                rows = response_rows(pr, group_advantages(pr.rewards, 1e-4).tolist(), merge=False)
                logp, mask = response_logprobs(model, [pr.prompt_ids] * args.k_resp, pr.responses, 0)
                ref, coef = (torch.tensor([getattr(r, a) for r in rows], device=dev) for a in ("ref", "coef"))
                popi_loss(logp, ref, mask, coef, args.k_resp, None).backward()
                flat = torch.cat([p.grad.reshape(-1).float() for p in model.parameters()])
                proj.project(flat)
                model.zero_grad(set_to_none=True)
        return None

    if args.mode == "streamed_compiled":
        model.model.forward = torch.compile(model.model.forward, dynamic=True)
    warmup = time.perf_counter()
    if args.warmup:  # first calls (kernel compiles, allocator growth) outside the timing
        run(prompts[: args.prompt_batch if args.mode.startswith("packed") else 1])
    warmup = time.perf_counter() - warmup
    if dev == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    feats = run(prompts)
    if dev == "cuda":
        torch.cuda.synchronize()
    sec = time.perf_counter() - t
    peak = (torch.cuda.max_memory_allocated() if dev == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    out = {"mode": args.mode, "params": dim, "seconds": sec, "warmup_s": warmup, "prompts_per_s": args.prompts / sec,
           "peak_gb": peak / 1e9}
    if feats is not None:  # per-prompt features: relative error against the eager streamed pass (after the timing)
        vars(model.model).pop("forward", None)
        ref = popi_features(model, prompts, proj, 0, PopiConfig(micro_batch_tokens=args.micro_batch_tokens))
        ref = ref.features.to(feats)
        out["max_rel_err"] = float(((feats - ref).norm(dim=1) / ref.norm(dim=1)).max())
    return out


def realistic_prompts(n: int, k: int, cap: int, median_frac: float, at_cap: float, vocab: int, seed: int = 0) -> list:
    """``n`` prompts of 64-256 tokens with ``k`` distinct responses each: log-normal lengths (median
    ``median_frac`` x ``cap``, sigma 0.8) cut at ``cap``, a share ``at_cap`` set to ``cap``; rewards 0/1 alternating."""
    import numpy as np

    from cropi_verl.influence.gradients import PromptRollouts

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        lengths = np.minimum(cap, np.maximum(1, rng.lognormal(np.log(median_frac * cap), 0.8, k).astype(int)))
        lengths[rng.random(k) < at_cap] = cap
        responses = [rng.integers(0, vocab, m).tolist() for m in lengths]
        out.append(PromptRollouts(i, rng.integers(0, vocab, rng.integers(64, 257)).tolist(), responses,
                                  [[-2.0] * m for m in lengths], [float(j % 2) for j in range(k)]))
    return out


def real_model(args) -> tuple[torch.nn.Module, int]:
    """(model, pad id) of ``--model`` as a preset or local folder, fp32 on ``--device``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cropi_verl.models.presets import model_source
    from cropi_verl.models.special_tokens import model_token_rule

    folder = model_source(args.model)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(args.device).eval()
    return model, model_token_rule(model, AutoTokenizer.from_pretrained(folder)).pad_id


def rollout_prompts(path: str, n: int, stop_model: str) -> list:
    """The first ``n`` prompts of a rollouts parquet that have a gradient (not zero-advantage), as POPI inputs."""
    from transformers import AutoTokenizer

    from cropi_verl.influence.gradients import is_zero_advantage
    from cropi_verl.models.presets import model_source
    from cropi_verl.models.special_tokens import token_rule_of
    from cropi_verl.rollout.records import RolloutLimits, read_rollouts, to_prompt_rollouts

    folder = model_source(stop_model)
    rule = token_rule_of(folder, AutoTokenizer.from_pretrained(folder))
    prompts = [p for p in to_prompt_rollouts(read_rollouts(path, rule.stop_ids, RolloutLimits.of_model(folder)))
               if not is_zero_advantage(p.rewards)]
    if len(prompts) < n:
        raise ValueError(f"--rollouts {path}: {len(prompts)} prompts with a gradient, fewer than --prompts {n}")
    return prompts[:n]


def run_realistic(args) -> dict:
    """Padded against packed rows on ``realistic_prompts`` or ``--rollouts`` (module docstring)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from cropi_verl.influence.gradients import micro_batches, parameter_offsets, popi_features, processed_tokens
    from cropi_verl.influence.projection import make_projector

    torch.manual_seed(0)
    if args.model in MODELS:
        cfg = Qwen2Config(**MODELS[args.model], max_position_embeddings=max(4096, 2 * args.cap),
                          tie_word_embeddings=True)
        with torch.device(args.device):
            model = Qwen2ForCausalLM(cfg).to(torch.bfloat16 if args.device == "cuda" else torch.float32)
        pad = 0
    else:
        model, pad = real_model(args)
    _, dim = parameter_offsets(model)
    proj = make_projector("sparse_jl", dim, args.k)
    if args.rollouts:
        prompts = rollout_prompts(args.rollouts, args.prompts, args.model)
    else:
        prompts = realistic_prompts(args.prompts, args.k_resp, args.cap, args.median_frac, args.at_cap,
                                    model.config.vocab_size)
    real = sum(len(p.prompt_ids) + len(r) for p in prompts for r in p.responses)
    positions, seconds, feats = {}, {}, {}
    lengths = [[len(r) for r in p.responses] for p in prompts]
    for name, pack in LAYOUTS.items():
        positions[name] = sum(processed_tokens(len(p.prompt_ids), [n[i] for i in b], False, pack)
                              for p, n in zip(prompts, lengths)
                              for b in micro_batches(n, len(p.prompt_ids), args.micro_batch_tokens, False, pack))
    popi = {name: PopiConfig(micro_batch_tokens=args.micro_batch_tokens, share_prompt=False, pack=pack,
                             stream_buffer=args.stream_buffer) for name, pack in LAYOUTS.items()}
    for name in LAYOUTS:  # warm-up (allocator, kernels)
        popi_features(model, prompts[:1], proj, pad, popi[name])
    for _ in range(args.repeats):
        for name in LAYOUTS:
            t = time.perf_counter()
            res = popi_features(model, prompts, proj, pad, popi[name])
            if args.device == "cuda":
                torch.cuda.synchronize()
            seconds[name] = min(seconds.get(name, float("inf")), time.perf_counter() - t)
            feats[name] = res.features

    def rel(name: str) -> float:
        return float(((feats[name] - feats["padded"]).norm(dim=1) / feats["padded"].norm(dim=1)).max())

    return {"model": args.model, "params": dim, "device": args.device, "prompts": args.prompts, "cap": args.cap,
            "real_tokens": real, **{f"{n}_positions": positions[n] for n in LAYOUTS},
            **{f"token_ratio_{n}": round(positions[n] / real, 3) for n in LAYOUTS},
            **{f"s_per_prompt_{n}": round(seconds[n] / args.prompts, 4) for n in LAYOUTS},
            **{f"real_tokens_per_s_{n}": round(real / seconds[n], 1) for n in LAYOUTS},
            "rollouts": args.rollouts,
            "packed_speedup": round(seconds["padded"] / seconds["packed"], 2),
            "prompt_once_speedup": round(seconds["padded"] / seconds["prompt_once"], 2),
            "max_rel_err": max(rel("packed"), rel("prompt_once")), "max_rel_err_prompt_once": rel("prompt_once")}


def print_realistic(out: dict) -> None:
    print(f"model={out['model']} ({out['params']:,} params) device={out['device']} {out['prompts']} prompts, response "
          f"cap {out['cap']}: {out['real_tokens']:,} real tokens")
    print(f"{'rows':<12}{'positions':>11}{'over real':>11}{'s/prompt':>10}{'real tokens/s':>15}")
    for name in LAYOUTS:
        print(f"{name:<12}{out[f'{name}_positions']:>11,}{out[f'token_ratio_{name}']:>11.3f}"
              f"{out[f's_per_prompt_{name}']:>10.4f}{out[f'real_tokens_per_s_{name}']:>15.1f}")
    print(f"speed-up over padded rows: packed {out['packed_speedup']:.2f}x, prompt once "
          f"{out['prompt_once_speedup']:.2f}x; largest relative feature difference {out['max_rel_err']:.1e}")
    print(json.dumps(out))


@one_line_errors(resumes=False)
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter, epilog=(
        "examples:\n  python scripts/bench_gradients.py --prompts 16\n"
        "  OMP_NUM_THREADS=1 python scripts/bench_gradients.py --modes streamed_compiled --prompts 64 --distinct 4\n"
        "  python scripts/bench_gradients.py --model qwen2.5-1.5b --device cuda"))
    ap.add_argument("--model", default="tiny", help=f"{', '.join(sorted(MODELS))} (random init), or with --lengths "
                    "realistic a preset (smollm2-135m) or a local HF model folder (its weights)")
    ap.add_argument("--rollouts", default=None, help="realistic: a rollouts parquet whose real prompts and "
                    "responses are timed (module docstring)")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--k-resp", type=int, default=8, help="responses per prompt")
    ap.add_argument("--tokens", type=int, default=32, help="tokens per response")
    ap.add_argument("--prompt-tokens", type=int, default=16, help="tokens per prompt")
    ap.add_argument("--distinct", type=int, default=8, help="distinct responses per prompt (the rest repeat them)")
    ap.add_argument("--micro-batch-tokens", type=int, default=PopiConfig.micro_batch_tokens,
                    help="streamed: tokens per forward/backward")
    ap.add_argument("--prompt-batch", type=int, default=8, help="prompts per batch (packed_* modes)")
    ap.add_argument("--k", type=int, default=8192, help="projection dimension")
    ap.add_argument("--stream-buffer", type=int, default=PopiConfig.stream_buffer,
                    help="streamed: fp32 coordinates per staging segment")
    ap.add_argument("--share-prompt", action=argparse.BooleanOptionalAction, default=PopiConfig.share_prompt,
                    help="streamed: encode the prompt once per micro-batch (KV cache)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=MODES,
                    help="modes to run (naive and streamed always run: the ratios need them)")
    ap.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                    help="run one prompt (one batch for packed_*) before timing")
    ap.add_argument("--mode", choices=MODES, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--lengths", choices=["fixed", "realistic"], default="fixed",
                    help="realistic: padded against packed rows on drawn lengths (module docstring)")
    ap.add_argument("--cap", type=int, default=512, help="realistic: the response token cap")
    ap.add_argument("--median-frac", type=float, default=0.3, help="realistic: median response length / cap")
    ap.add_argument("--at-cap", type=float, default=0.1, help="realistic: share of responses at the cap")
    ap.add_argument("--repeats", type=int, default=2, help="realistic: timed runs per layout (the fastest counts)")
    args = ap.parse_args(argv)
    if args.model not in MODELS and args.lengths != "realistic":
        raise ValueError(f"--model {args.model}: a model folder or preset needs --lengths realistic; the other modes "
                         f"take one of {', '.join(sorted(MODELS))}")
    if args.lengths == "realistic":
        print_realistic(run_realistic(args))
        return 0
    if args.mode:
        print(json.dumps(run_mode(args)))
        return 0
    res = {}
    modes = [m for m in MODES if m in {"naive", "streamed", *args.modes}]
    for mode in modes:
        out = subprocess.run([sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--mode", mode],
                             capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"bench_gradients: mode {mode} failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
        res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"model={args.model} ({res['streamed']['params']:,} params) device={args.device} {args.prompts} prompts x "
          f"{args.k_resp} responses ({args.distinct} distinct) x {args.tokens} tokens after {args.prompt_tokens}, "
          f"k={args.k}")
    print(f"{'mode':<18}{'prompts/s':>11}{'s/prompt':>10}{'peak GB':>9}{'speed vs naive':>16}"
          f"{'vs streamed':>13}{'max rel err':>13}{'warm-up s':>11}")
    for m in modes:
        r = res[m]
        err = f"{r['max_rel_err']:>13.1e}" if "max_rel_err" in r else f"{'-':>13}"
        print(f"{m:<18}{r['prompts_per_s']:>11.2f}{1 / r['prompts_per_s']:>10.3f}{r['peak_gb']:>9.3f}"
              f"{r['prompts_per_s'] / res['naive']['prompts_per_s']:>15.2f}x"
              f"{r['prompts_per_s'] / res['streamed']['prompts_per_s']:>12.2f}x{err}{r['warmup_s']:>11.1f}")
    s, n = res["streamed"], res["naive"]
    out = {"model": args.model, "device": args.device, "prompts_per_s": round(s["prompts_per_s"], 3),
           "seconds_per_prompt": round(1 / s["prompts_per_s"], 4), "peak_gb": round(s["peak_gb"], 3),
           "speed_vs_naive": round(s["prompts_per_s"] / n["prompts_per_s"], 2),
           "peak_memory_vs_naive": round(s["peak_gb"] / n["peak_gb"], 3)}
    if "streamed_plain" in res:
        out["speed_vs_plain"] = round(s["prompts_per_s"] / res["streamed_plain"]["prompts_per_s"], 2)
    for m in ("streamed_compiled", "packed_sum", "packed_vmap"):
        if m in res:
            out[f"{m}_vs_streamed"] = round(res[m]["prompts_per_s"] / s["prompts_per_s"], 2)
            if "max_rel_err" in res[m]:
                out[f"{m}_max_rel_err"] = res[m]["max_rel_err"]
    if "streamed_compiled" in res:
        out["streamed_compiled_warmup_s"] = round(res["streamed_compiled"]["warmup_s"], 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
