"""The CUDA kernel of ``sparse_jl`` (``sparse_jl.cu``), compiled at run time by NVRTC through PyTorch's
``torch.cuda._compile_kernel`` (no nvcc, no build step; NVRTC ships with PyTorch's CUDA wheels).

It gives the bits of the CPU paths (see ``sparse_jl.cu``). Where it cannot be used (an older PyTorch without
``_compile_kernel``, an NVRTC error, ``CROPI_NATIVE=0``), ``load()`` says so in one log line and the projector runs
its torch path on the GPU: the same sketch, but ``index_add_``'s atomics add in no fixed order, so the last bits can
differ run to run (and it was 203x slower on an H100, ``bench_projection.py``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Callable

import torch

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("sparse_jl.cu")
THREADS = 512  # as in sparse_jl.cu
SHARED_BUDGET = 64 << 10  # dynamic shared memory per CTA (bytes): 3 CTAs per Hopper SM
MAX_GRID_YZ = 65535
OPTIONS = ["--fmad=false", "-std=c++17"]  # plain IEEE adds (the kernel has no multiply-add, this only guards it)


@dataclass(frozen=True)
class CudaKernels:
    blocks: dict[torch.dtype, Callable]  # sjl_blocks_f32 / _bf16(x, plan, ld_lo, ld_hi, two_k, kp, part)
    reduce: Callable  # sjl_reduce(part, nb, m, total)
    max_shared: int  # bytes of dynamic shared memory one CTA may opt into


@lru_cache(maxsize=None)
def load(device_index: int) -> CudaKernels | None:
    """The compiled kernels for one CUDA device, or None (logged once) when they cannot be used."""
    if os.environ.get("CROPI_NATIVE", "1") == "0":
        log.info("sparse_jl CUDA kernel disabled by CROPI_NATIVE=0; using the torch path")
        return None
    compile_kernel = getattr(torch.cuda, "_compile_kernel", None)
    if compile_kernel is None:
        log.warning("sparse_jl CUDA kernel unavailable (torch %s has no torch.cuda._compile_kernel); using the torch "
                    "path (same sketch, atomics in no fixed order)", torch.__version__)
        return None
    src = SOURCE.read_text()
    try:
        with torch.cuda.device(device_index):
            compile_ = partial(compile_kernel, src, cuda_include_dirs=[str(SOURCE.parent)], nvcc_options=OPTIONS)
            blocks = {dtype: compile_(f"sjl_blocks_{name}") for dtype, name in [(torch.float32, "f32"),
                                                                               (torch.bfloat16, "bf16")]}
            reduce = compile_("sjl_reduce")
            props = torch.cuda.get_device_properties(device_index)
    except RuntimeError as e:
        log.warning("sparse_jl CUDA kernel unavailable (%s); using the torch path (same sketch, atomics in no "
                    "fixed order)", str(e).splitlines()[0])
        return None
    max_shared = int(getattr(props, "shared_memory_per_block_optin", 48 << 10))
    for kernel in blocks.values():
        kernel.set_shared_memory_config(min(SHARED_BUDGET, max_shared))
    return CudaKernels(blocks, reduce, max_shared)


def bucket_range(kernels: CudaKernels, k: int) -> int:
    """kp, the buckets one CTA keeps: as many as SHARED_BUDGET holds (a sum and an owner word, 8 bytes each), at
    most k; a larger k is split over ceil(k / kp) CTAs per block, each reading the whole block."""
    return min(k, min(SHARED_BUDGET, kernels.max_shared) // 8)


def project(kernels: CudaKernels, x: torch.Tensor, plan: torch.Tensor, k: int) -> torch.Tensor:
    """``[B, k]`` fp64 sums of the blocks of ``plan`` (``[nb, 4]`` int64 on x's device: column, length, low word,
    high-word key) of ``x`` ``[B, n]`` (fp32 or bf16, unit column stride)."""
    nb, rows = plan.shape[0], x.shape[0]
    if nb == 0 or rows == 0:
        return torch.zeros(rows, k, dtype=torch.float64, device=x.device)
    if rows > MAX_GRID_YZ:
        raise ValueError(f"sparse_jl CUDA kernel: at most {MAX_GRID_YZ} rows per call, got {rows}")
    part = torch.empty(nb, rows, k, dtype=torch.float32, device=x.device)
    ld, kp = x.stride(0), bucket_range(kernels, k)  # sizes go as 32-bit ints, not copied (a pageable copy syncs)
    for s in range(0, nb, MAX_GRID_YZ):  # grid.y holds at most 65535 blocks (17e9 coordinates) per launch
        n = min(MAX_GRID_YZ, nb - s)
        kernels.blocks[x.dtype](grid=(-(-k // kp), n, rows), block=(THREADS, 1, 1), shared_mem=8 * kp,
                                args=[x, plan[s:], ld & 0x7FFFFFFF, ld >> 31, 2 * k, kp, part[s:]])
    total = torch.empty(rows, k, dtype=torch.float64, device=x.device)
    kernels.reduce(grid=((rows * k + THREADS - 1) // THREADS, 1, 1), block=(THREADS, 1, 1),
                   args=[part, nb, rows * k, total])
    return total
