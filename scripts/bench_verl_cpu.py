"""CPU seconds per GRPO step: verl's real trainer (recipes/run_cropi_tiny_verl_cpu.sh) against the local backend
(cropi_verl/local/grpo.py), on the same tiny policy, prompts and batch, in one run.

Both sample ``--n`` responses of at most 32 tokens for ``--batch`` prompts, score them, and make one update. verl's
step is its ``timing_s/step`` (generation through the agent loop and the hf replica, reward, old log-probs, GRPO
advantage, FSDP2 update, weight sync to the replica), full data, no influence pass; the local step is one
``grpo_step``. The first step of each is warm-up and left out (median of the rest). verl's start-up (Ray, workers,
replica) is reported apart, and an estimate of the default demo on verl (``--methods`` runs of ``--demo-steps``
steps, start-up included, evaluation and influence passes not included) closes the table.

    .venv/bin/python scripts/bench_verl_cpu.py --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cropi_verl.local.grpo import GRPOConfig, grpo_step

ROOT = Path(__file__).resolve().parents[1]


def prepare(out: Path) -> Path:
    """The recipe's inputs (quick preset) in ``out``; returns the policy's folder."""
    res = subprocess.run([sys.executable, "-m", "cropi_verl.verl_cpu.prepare", f"output_dir={out}", "preset=quick"],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    return Path(res.stdout.strip().splitlines()[-1])


def local_steps(policy: Path, train: pd.DataFrame, args) -> list[float]:
    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(policy)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    cfg = GRPOConfig(batch_size=args.batch, n=args.n, max_new_tokens=32, lr=1e-4)
    out = []
    for step in range(args.steps):
        batch = train.iloc[step * args.batch:(step + 1) * args.batch]
        t0 = time.perf_counter()
        grpo_step(model, tok, opt, batch, cfg, seed=step)
        out.append(time.perf_counter() - t0)
    return out


def verl_steps(out: Path, args) -> tuple[list[float], float]:
    """verl's ``timing_s/step`` per step, and the launch's wall seconds (start-up and steps)."""
    overrides = [f"data.train_batch_size={args.batch}", f"actor_rollout_ref.actor.ppo_mini_batch_size={args.batch}",
                 f"actor_rollout_ref.rollout.n={args.n}", "cropi.strategy=full", "cropi.num_stages=1",
                 f"cropi.steps_per_stage={args.steps}", f"trainer.save_freq={args.steps}", "trainer.test_freq=-1",
                 "trainer.val_before_train=false", f"trainer.default_local_dir={out}/checkpoints"]
    t0 = time.perf_counter()
    res = subprocess.run(["bash", str(ROOT / "recipes" / "run_cropi_tiny_verl_cpu.sh"), *overrides], cwd=ROOT,
                         capture_output=True, text=True, env=dict(os.environ, OUT=str(out)))
    wall = time.perf_counter() - t0
    if res.returncode:
        sys.exit(f"error: the verl run failed:\n{res.stderr[-3000:]}")
    return [float(v) for v in re.findall(r"timing_s/step:([\d.]+)", res.stdout)], wall


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--steps", type=int, default=10, help="GRPO steps per backend (the first is warm-up)")
    ap.add_argument("--batch", type=int, default=16, help="prompts per step (the demo's grpo.batch_size)")
    ap.add_argument("--n", type=int, default=8, help="responses per prompt (the demo's grpo.n)")
    ap.add_argument("--methods", type=int, default=5, help="runs of the default demo")
    ap.add_argument("--demo-steps", type=int, default=60, help="steps per run of the default demo")
    args = ap.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        policy = prepare(out)
        train = pd.read_parquet(out / "data" / "train.parquet")
        local = local_steps(policy, train, args)
        verl, wall = verl_steps(out, args)
    loc, ver = statistics.median(local[1:]), statistics.median(verl[1:])
    startup = wall - sum(verl)
    demo_min = args.methods * (startup + args.demo_steps * ver) / 60
    rows = [("local backend (grpo_step)", loc), ("verl trainer (timing_s/step)", ver)]
    print(f"{'backend':32s} {'s/step':>8s}   ({args.batch} prompts x {args.n} responses, median of steps 2..{args.steps})")
    for name, sec in rows:
        print(f"{name:32s} {sec:8.2f}")
    print(f"verl / local: {ver / loc:.2f}x; verl start-up {startup:.1f} s; default demo on verl ~{demo_min:.1f} min "
          f"({args.methods} x ({startup:.0f} s + {args.demo_steps} x {ver:.2f} s), without evaluation and passes)")
    print(json.dumps({"local_s_per_step": round(loc, 3), "verl_s_per_step": round(ver, 3),
                      "verl_over_local": round(ver / loc, 3), "verl_startup_s": round(startup, 1),
                      "demo_on_verl_min_estimate": round(demo_min, 1), "batch": args.batch, "n": args.n}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
