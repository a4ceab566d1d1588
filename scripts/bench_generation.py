#!/usr/bin/env python
"""Generation throughput of the offline collection, the input ``scripts/plan.py`` assumes (``gen_tokens_per_gpu_s``).

On a random-init model of ``--model``'s shape (the Qwen2.5 configs of ``scripts/gpu_pass_check.py``) in bf16 on a
GPU (fp32 on the CPU): ``--prompts`` prompts of ``--prompt-tokens`` random tokens, ``--n`` responses each, exactly
``--new-tokens`` generated per response (EOS ignored: random weights would stop anywhere), sampled at the recipe's
temperature 0.5. With vLLM installed (``--backend auto``) it runs vLLM's ``LLM.generate`` on token ids as the
collection does (the weights saved to a temporary folder, no tokenizer); otherwise HF ``generate``, labelled
``hf_generate``: a lower bound of what the recipe's vLLM collection reaches. One warm-up call, then one timed call.

    python scripts/bench_generation.py [--model qwen2.5-1.5b] [--prompts 64] [--n 8] [--new-tokens 512]

Prints a table and a final JSON line: backend, generated tokens per second on this one device, rows, seconds.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_pass_check import MODELS  # noqa: E402  (the Qwen2.5 configs)

from cropi_verl.utils.cli import HelpFormatter, one_line_errors  # noqa: E402
from cropi_verl.utils.config_rules import Count, arg_type  # noqa: E402


def random_model(name: str, device: str):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        return Qwen2ForCausalLM._from_config(Qwen2Config(**MODELS[name]), dtype=dtype).eval()


def hf_generate(model, prompts: list[list[int]], n: int, new_tokens: int) -> float:
    """Seconds of one ``generate`` call: every prompt (same length) x ``n`` rows, exactly ``new_tokens`` each."""
    ids = torch.tensor(prompts, device=model.device)
    t0 = time.perf_counter()
    with torch.no_grad():
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=0.5, top_k=0,
                       num_return_sequences=n, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                       pad_token_id=0)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def vllm_generate(model, prompts: list[list[int]], n: int, new_tokens: int) -> tuple[float, float]:
    """(warm-up seconds, timed seconds) of vLLM on the model's weights saved to a temporary folder."""
    from vllm import LLM, SamplingParams

    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        llm = LLM(model=tmp, skip_tokenizer_init=True, dtype="bfloat16", gpu_memory_utilization=0.6,
                  tensor_parallel_size=1, seed=0)
        params = SamplingParams(n=n, temperature=0.5, max_tokens=new_tokens, min_tokens=new_tokens, ignore_eos=True)
        inputs = [{"prompt_token_ids": p} for p in prompts]
        seconds = []
        for _ in range(2):
            t0 = time.perf_counter()
            llm.generate(inputs, params, use_tqdm=False)
            seconds.append(time.perf_counter() - t0)
    return seconds[0], seconds[1]


@one_line_errors(resumes=False)
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="qwen2.5-1.5b")
    ap.add_argument("--backend", choices=["auto", "vllm", "hf"], default="auto",
                    help="auto: vllm when it is installed, else hf (HF generate)")
    ap.add_argument("--prompts", type=arg_type(Count), default=64)
    ap.add_argument("--n", type=arg_type(Count), default=8, help="responses per prompt (the recipe: 8)")
    ap.add_argument("--prompt-tokens", type=arg_type(Count), default=256)
    ap.add_argument("--new-tokens", type=arg_type(Count), default=512)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    backend = args.backend if args.backend != "auto" else ("vllm" if importlib.util.find_spec("vllm") else "hf")
    if backend == "vllm" and args.device != "cuda":
        raise ValueError("--backend vllm needs a CUDA device")
    model = random_model(args.model, args.device)
    rng = random.Random(0)
    vocab = MODELS[args.model]["vocab_size"]
    prompts = [[rng.randrange(vocab) for _ in range(args.prompt_tokens)] for _ in range(args.prompts)]
    if backend == "vllm":
        warmup, seconds = vllm_generate(model, prompts, args.n, args.new_tokens)
    else:
        warmup = hf_generate(model, prompts[:1], 1, 4)
        seconds = hf_generate(model, prompts, args.n, args.new_tokens)
    rows = args.prompts * args.n
    tokens_s = rows * args.new_tokens / seconds
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else None
    print(f"{'backend':<13}{'model':<15}{'rows':>6}{'new tokens':>12}{'seconds':>9}{'tokens/s':>11}")
    print(f"{'hf_generate' if backend == 'hf' else 'vllm':<13}{args.model:<15}{rows:>6}{args.new_tokens:>12}"
          f"{seconds:>9.2f}{tokens_s:>11.0f}")
    print(json.dumps({"backend": "hf_generate" if backend == "hf" else "vllm", "model": args.model,
                      "device": args.device, "gpu": gpu, "rows": rows, "prompt_tokens": args.prompt_tokens,
                      "new_tokens": args.new_tokens, "warmup_s": round(warmup, 4), "seconds": round(seconds, 4),
                      "tokens_per_s": round(tokens_s, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
