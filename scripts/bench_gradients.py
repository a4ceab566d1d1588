#!/usr/bin/env python
"""POPI gradient pass: prompts/s and peak memory, streamed projection vs the naive baseline.

``streamed``: ``popi_features`` (a hook projects each parameter's gradient as soon as it exists, then frees it).
``naive``: backward into ``.grad``, concatenate the full flat gradient, project it. Both on a random-init Qwen2
(``--model tiny``: the tiny policy's shape; ``--model qwen2.5-1.5b``: Qwen2.5-1.5B's config, for a GPU) with
synthetic offline rollouts of K responses x T tokens. Each mode runs in its own subprocess so peak memory
(``ru_maxrss`` on CPU, ``max_memory_allocated`` on GPU) is its own. The last line is one JSON object.

    python scripts/bench_gradients.py [--model tiny] [--prompts 32] [--k-resp 8] [--tokens 32]
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

MODELS = {
    "tiny": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=400),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936),
}


def run_mode(args) -> dict:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from cropi_verl.influence.gradients import PopiConfig, PromptRollouts, parameter_offsets, popi_features
    from cropi_verl.influence.projection import make_projector

    dev = args.device
    torch.manual_seed(0)
    cfg = Qwen2Config(**MODELS[args.model], max_position_embeddings=4096, tie_word_embeddings=args.model == "tiny")
    model = Qwen2ForCausalLM(cfg).to(dev, torch.bfloat16 if dev == "cuda" else torch.float32)
    _, dim = parameter_offsets(model)
    proj = make_projector("sparse_jl", dim, args.k)
    rng = random.Random(0)
    V = cfg.vocab_size
    prompts = [
        PromptRollouts(i, [rng.randrange(V) for _ in range(16)],
                       [[rng.randrange(V) for _ in range(args.tokens)] for _ in range(args.k_resp)],
                       [[-2.0] * args.tokens for _ in range(args.k_resp)], [float(j % 2) for j in range(args.k_resp)])
        for i in range(args.prompts)
    ]
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    if args.mode == "streamed":
        popi_features(model, prompts, proj, 0, PopiConfig(micro_batch=args.micro_batch))
    else:
        from cropi_verl.influence.gradients import group_advantages, popi_loss, response_logprobs

        for pr in prompts:
            adv = group_advantages(pr.rewards, 1e-4).to(dev)
            logp, mask = response_logprobs(model, [pr.prompt_ids] * args.k_resp, pr.responses, 0)
            beh = torch.tensor(pr.behaviour_logprobs, device=dev)
            popi_loss(logp, beh, mask, adv, args.k_resp, None).backward()
            flat = torch.cat([p.grad.reshape(-1).float() for p in model.parameters()])
            proj.project(flat)
            model.zero_grad(set_to_none=True)
    if dev == "cuda":
        torch.cuda.synchronize()
    sec = time.perf_counter() - t
    peak = (torch.cuda.max_memory_allocated() if dev == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"mode": args.mode, "params": dim, "seconds": sec, "prompts_per_s": args.prompts / sec,
            "peak_gb": peak / 1e9}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="tiny")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--k-resp", type=int, default=8, help="responses per prompt")
    ap.add_argument("--tokens", type=int, default=32, help="tokens per response")
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--k", type=int, default=8192, help="projection dimension")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--mode", choices=["streamed", "naive"], default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.mode:
        print(json.dumps(run_mode(args)))
        return 0
    res = {}
    for mode in ["naive", "streamed"]:
        out = subprocess.run([sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--mode", mode],
                             capture_output=True, text=True, check=True)
        res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"model={args.model} ({res['streamed']['params']:,} params) device={args.device} "
          f"{args.prompts} prompts x {args.k_resp} responses x {args.tokens} tokens, k={args.k}")
    print(f"{'mode':<10}{'prompts/s':>11}{'s/prompt':>10}{'peak GB':>9}")
    for m in ["naive", "streamed"]:
        r = res[m]
        print(f"{m:<10}{r['prompts_per_s']:>11.2f}{1 / r['prompts_per_s']:>10.3f}{r['peak_gb']:>9.3f}")
    s, n = res["streamed"], res["naive"]
    print(json.dumps({"model": args.model, "device": args.device, "prompts_per_s": round(s["prompts_per_s"], 3),
                      "seconds_per_prompt": round(1 / s["prompts_per_s"], 4), "peak_gb": round(s["peak_gb"], 3),
                      "speed_vs_naive": round(s["prompts_per_s"] / n["prompts_per_s"], 2),
                      "peak_memory_vs_naive": round(s["peak_gb"] / n["peak_gb"], 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
