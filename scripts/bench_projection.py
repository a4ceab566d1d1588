#!/usr/bin/env python
"""Projection throughput: each method on a d-dim fp32 vector (50M on CPU; 1.5B on GPU when one is present).

Reports GB/s of input consumed, the fraction of the measured memory bandwidth (a large ``tensor.sum()`` read in
the same run), and the speed-up of ``sparse_jl`` over a dense Gaussian JL at the same k; the dense JL is timed
on a slice (it is infeasible on the whole vector) and scaled linearly in d; on a GPU it is its cheapest form there,
a matrix drawn on the device (``torch.randn``) and one product, since ``make_projector("gaussian")`` draws its
matrix on the CPU for device-independent bits. ``sparse_jl`` runs the C kernel (``sparse_jl.c``) on CPU or the CUDA
kernel (``sparse_jl.cu``) on GPU when it builds; its torch path is timed too. Timings are steady state: one warm-up
call fills the bucket-index cache (and compiles the CUDA kernel), as the first prompt of a gradient pass does.
The last line is one JSON object.

    python scripts/bench_projection.py [--quick] [--dim 50000000] [--k 8192] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial

import torch

from cropi_verl.influence import cuda_kernel, native
from cropi_verl.influence.projection import make_projector
from cropi_verl.utils.cli import HelpFormatter, one_line_errors


def timed(fn, device: str, repeat: int) -> float:
    """Best wall time of ``repeat`` calls (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


@one_line_errors(resumes=False)
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10M dims, one repeat of the slow methods (<= 60 s)")
    ap.add_argument("--dim", type=int, default=None, help="default 50M (CPU) / 1.5B (GPU); quick 10M")
    ap.add_argument("--k", type=int, default=8192)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dense-slice", type=int, default=None,
                    help="coordinates the dense JL is timed on (default 2^17; quick 2^14)")
    args = ap.parse_args(argv)
    dev = args.device
    dim = args.dim or (10_000_000 if args.quick else (1_500_000_000 if dev == "cuda" else 50_000_000))
    repeat = 1 if args.quick else 3  # the dense and subset methods (seconds each)
    fast_repeat = 7  # sparse_jl and the bandwidth read (milliseconds each): best of 7, in quick mode too
    args.dense_slice = args.dense_slice or (1 << 14 if args.quick else 1 << 17)
    x = torch.randn(dim, device=dev)
    gb = x.numel() * 4 / 1e9
    bw = gb / timed(lambda: x.sum(), dev, fast_repeat)
    rows = []
    if dev == "cuda":
        use_native = cuda_kernel.load(torch.cuda.current_device()) is not None
    else:
        use_native = native.load() is not None
    runs = [("sparse_jl", "sparse_jl", True), ("sparse_jl (torch path)", "sparse_jl", False),
            ("subset_rademacher", "subset_rademacher", False), ("subset_gaussian", "subset_gaussian", False)]
    for label, method, nat in runs:
        if label.endswith("(torch path)") and not use_native:
            continue  # sparse_jl above already ran the torch path
        n = dim if method == "sparse_jl" else min(dim, args.dense_slice * 8)
        proj = make_projector(method, dim, args.k, 0, subset_ratio=0.15, native=nat)
        sec = timed(lambda: proj.project(x[:n]), dev, fast_repeat if method == "sparse_jl" else repeat) * dim / n
        rows.append({"method": label, "seconds": sec, "gb_per_s": gb / sec, "timed_on": n})
    head = x[: args.dense_slice]
    if dev == "cuda":
        def dense_fn():
            return head @ torch.randn(args.dense_slice, args.k, device=dev)
    else:
        dense_fn = partial(make_projector("gaussian", args.dense_slice, args.k, 0).project, head)
    dense_sec = timed(dense_fn, dev, repeat) * dim / args.dense_slice
    rows.append({"method": "gaussian (dense)", "seconds": dense_sec, "gb_per_s": gb / dense_sec, "timed_on": args.dense_slice})
    print(f"d={dim:,} k={args.k} device={dev} threads={torch.get_num_threads()} read bandwidth={bw:.2f} GB/s "
          f"sparse_jl kernel={('CUDA' if dev == 'cuda' else 'C (native)') if use_native else 'torch'}")
    print(f"{'method':<24}{'seconds':>10}{'GB/s':>8}{'of bw':>8}{'vs dense':>10}  timed on")
    for r in rows:
        print(f"{r['method']:<24}{r['seconds']:>10.3f}{r['gb_per_s']:>8.2f}{r['gb_per_s'] / bw:>8.1%}"
              f"{dense_sec / r['seconds']:>9.1f}x  {r['timed_on']:,}")
    sj = rows[0]
    torch_path = next((r for r in rows if r["method"] == "sparse_jl (torch path)"), sj)
    print(json.dumps({"method": "sparse_jl", "device": dev, "native": use_native, "dim": dim, "k": args.k,
                      "seconds": round(sj["seconds"], 4), "gb_per_s": round(sj["gb_per_s"], 3),
                      "bandwidth_gb_per_s": round(bw, 3), "bandwidth_fraction": round(sj["gb_per_s"] / bw, 4),
                      "speedup_vs_dense": round(dense_sec / sj["seconds"], 1),
                      "speedup_vs_torch_path": round(torch_path["seconds"] / sj["seconds"], 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
