"""Random projections P: R^d -> R^k behind one interface, chosen by name (``make_projector``).

``project(x, offset)`` maps a vector ``[n]`` (or a batch ``[B, n]``) holding coordinates
``offset .. offset+n-1`` of the full d-dim vector to ``[k]`` (or ``[B, k]``) float32. Every method is linear and
indexes its randomness by the *global* coordinate, so

    project(x[:m], 0) + project(x[m:], m) == project(x, 0)      (up to float rounding)

which is what lets per-tensor streaming and FSDP shards project their piece and sum.

Methods:

- ``sparse_jl`` (default, ours): a CountSketch. Coordinate i goes to bucket b(i) with sign s(i), both from a
  counter-based hash h = fmix32(i * 0x9E3779B1 ^ key(seed, i >> 32)) (murmur3's finaliser, int32 ops): with
  c = h mod 2k (h's low 31 bits when 2k is not a power of two), b = c >> 1 and s = (-1)^c,
  ``(Px)_j = sum_{i: b(i)=j} s(i) x_i``. E<Px, Py> = <x, y>, Var <= 2 |x|^2 |y|^2 / k. No stored matrix.
  Coordinates are processed in aligned canonical blocks (one fp32 running sum per bucket inside a block in
  coordinate order, fp64 across blocks in block order), so the result is bit-identical for any ``chunk_size``
  and thread count. On the CPU a fused C kernel
  (``sparse_jl.c``, built on first use by ``native.py``) runs the blocks on threads, and on a CUDA device a kernel
  (``sparse_jl.cu``, compiled by NVRTC in ``cuda_kernel.py``) runs one CTA per block; both give the same bits as the
  torch path on the CPU (``native=False``, or no compiler). The torch path on a GPU adds with atomics, in no fixed
  order: the same sketch, not the same last bits.
- ``subset_gaussian`` / ``subset_rademacher`` (the paper's scheme): keep a random subset of
  ``~subset_ratio * d`` coordinates (coordinate i kept iff hash_u(i) < ratio), then a dense JL with
  N(0, 1/(k ratio)) or +-1/sqrt(k ratio) entries; the rows of the kept coordinates of each aligned
  4096-coordinate sub-block are regenerated from (seed, sub-block) on the fly.
- ``gaussian``: dense N(0, 1/k) JL over all coordinates; a reference for small d only.
- ``identity``: exact (k = d).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache

import torch

from cropi_verl.influence import cuda_kernel, native

_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B1
_C1, _C2 = 0x85EBCA6B, 0xC2B2AE35
BLOCK = 1 << 18  # canonical block: the unit of accumulation order (never depends on chunk_size)
MATRIX_ROWS = 4096  # dense JL: rows of the matrix generated per seed (aligned to global coordinates)
BUCKET_CACHE_BYTES = 256 << 20  # sparse_jl: memory for cached bucket indices (speed only, never the result)


def _signed32(c: int) -> int:
    return c - (1 << 32) if c >= 1 << 31 else c


def fmix32_int(h: int) -> int:
    """murmur3 fmix32 on a Python int (the scalar reference)."""
    h &= _M32
    h ^= h >> 16
    h = (h * _C1) & _M32
    h ^= h >> 13
    h = (h * _C2) & _M32
    h ^= h >> 16
    return h


def _fmix32_(h: torch.Tensor) -> torch.Tensor:
    """fmix32 in place on an int32 tensor (wrapping multiply; logical shifts emulated by masking)."""
    h.bitwise_xor_((h >> 16) & 0xFFFF)
    h.mul_(_signed32(_C1))
    h.bitwise_xor_((h >> 13) & 0x7FFFF)
    h.mul_(_signed32(_C2))
    return h.bitwise_xor_((h >> 16) & 0xFFFF)


def _hi_key(seed: int, hi: int, stream: int) -> int:
    return fmix32_int(fmix32_int(seed * 0x27D4EB2F + stream) ^ fmix32_int(hi + 0x165667B1))


def coordinate_hash(seed: int, start: int, n: int, device: torch.device | str = "cpu", stream: int = 0) -> torch.Tensor:
    """int32 hashes of global coordinates ``start .. start+n-1`` (the range must not cross a 2^32 boundary)."""
    hi = start >> 32
    if (start + n - 1) >> 32 != hi:
        raise ValueError("coordinate range crosses a 2^32 boundary; split it")
    lo = start & _M32
    if lo + n <= 1 << 31:
        h = torch.arange(lo, lo + n, device=device, dtype=torch.int32)
    else:  # int32 wraps: the same low 32 bits
        h = torch.arange(lo, lo + n, device=device, dtype=torch.int64).to(torch.int32)
    h.mul_(_signed32(_GOLDEN)).bitwise_xor_(_signed32(_hi_key(seed, hi, stream)))
    return _fmix32_(h)


def coordinate_hash_int(seed: int, i: int, stream: int = 0) -> int:
    """Scalar reference of ``coordinate_hash`` for one coordinate (tests compare the two)."""
    return fmix32_int(((i & _M32) * _GOLDEN & _M32) ^ _hi_key(seed, i >> 32, stream))


def _blocks(offset: int, n: int):
    """Split [offset, offset+n) at canonical block boundaries: yields (local start, global start, length)."""
    pos = offset
    while pos < offset + n:
        end = min((pos // BLOCK + 1) * BLOCK, offset + n)
        yield pos - offset, pos, end - pos
        pos = end


@dataclass(frozen=True)
class ProjectorConfig:
    method: str = "sparse_jl"
    dim: int = 0  # d, the full gradient dimension
    k: int = 8192
    seed: int = 0
    subset_ratio: float = 0.15  # subset_* methods only
    chunk_size: int = 1 << 20  # coordinates processed per step (memory/speed only, never the result)
    threads: int = 0  # 0: torch.get_num_threads()
    native: bool = True  # sparse_jl: the C kernel (CPU) or the CUDA kernel when it builds (speed only)


class Projector(ABC):
    """A linear map R^d -> R^k indexed by global coordinates (see the module docstring)."""

    VERSION = 1  # bumped when the same config gives other bits; part of ``config()``, so stale stores are refused

    def __init__(self, cfg: ProjectorConfig):
        if cfg.dim <= 0 or cfg.k <= 0:
            raise ValueError(f"projector needs dim > 0 and k > 0, got dim={cfg.dim}, k={cfg.k}")
        self.cfg = cfg
        self.k = cfg.k

    def config(self) -> dict:
        # the result does not depend on chunk_size, threads or native
        return asdict(self.cfg) | {"chunk_size": None, "threads": None, "native": None, "version": self.VERSION}

    def project(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Project coordinates ``offset..offset+n-1`` of a vector ``[n]`` or batch ``[B, n]``; fp32 out."""
        single = x.dim() == 1
        xb = x.reshape(1, -1) if single else x
        n = xb.shape[1]
        if offset < 0 or offset + n > self.cfg.dim:
            raise ValueError(f"coordinates [{offset}, {offset + n}) outside the projector's dim {self.cfg.dim}")
        out = self._project(self._input(xb.detach()), offset)
        return out[0] if single else out

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        """The ``[B, n]`` tensor ``_project`` reads: fp32 (a method that reads another dtype exactly overrides this)."""
        return x.float()

    @abstractmethod
    def _project(self, x: torch.Tensor, offset: int) -> torch.Tensor: ...


@lru_cache(maxsize=None)
def _thread_pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="projector")


class BlockwiseProjector(Projector):
    """Projects canonical blocks independently (optionally on threads) and sums them in block order in fp64."""

    def threads(self) -> int:
        return self.cfg.threads or torch.get_num_threads()

    def _project(self, x: torch.Tensor, offset: int) -> torch.Tensor:
        blocks = list(_blocks(offset, x.shape[1]))
        per_chunk = max(1, self.cfg.chunk_size // BLOCK)
        groups = [blocks[i : i + per_chunk] for i in range(0, len(blocks), per_chunk)]

        def run(group):
            return [self._block(x[:, s : s + n], g, n) for s, g, n in group]

        if self.threads() > 1 and len(groups) > 1 and x.device.type == "cpu":
            parts = [p for res in _thread_pool(self.threads()).map(run, groups) for p in res]
        else:
            parts = [p for g in groups for p in run(g)]
        total = torch.zeros(x.shape[0], self.k, dtype=torch.float64, device=x.device)
        for p in parts:
            total += p
        return total.float()

    @abstractmethod
    def _block(self, xb: torch.Tensor, start: int, n: int) -> torch.Tensor:
        """``[B, k]`` projection of one canonical block ``xb`` = coordinates ``start..start+n-1``."""


class SparseJL(BlockwiseProjector):
    """The bucket index of each block is cached (up to ``BUCKET_CACHE_BYTES``): a per-parameter stream projects
    the same coordinate ranges for every prompt, so the hash is computed once per range. The torch path keeps
    int64 buckets (``index_add_``'s fast path) and fp32 signs; the C kernel keeps c itself as uint16 (2k <= 65536)
    or uint32."""

    VERSION = 2  # 2: one signed fp32 sum per bucket (1 summed the +1 and -1 coordinates apart, then subtracted)

    def __init__(self, cfg: ProjectorConfig):
        super().__init__(cfg)
        self._buckets: dict[tuple[int, int, str], tuple[torch.Tensor, torch.Tensor] | torch.Tensor] = {}
        self._cache_left = BUCKET_CACHE_BYTES
        self._plans: dict[tuple[int, int, str], torch.Tensor] = {}

    def _bucket_sign(self, start: int, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """b(i) = c(i) >> 1 (int64) and s(i) = (-1)^c(i) (fp32), c(i) = h(i) mod 2k, for coordinates start..start+n-1."""
        cached = self._buckets.get((start, n, str(device)))
        if cached is not None:
            return cached
        two_k = 2 * self.k
        h = coordinate_hash(self.cfg.seed, start, n, device)
        c = (h.bitwise_and_(two_k - 1) if two_k & (two_k - 1) == 0 else h.bitwise_and_(0x7FFFFFFF).remainder_(two_k)).long()
        out = c >> 1, 1.0 - 2.0 * (c & 1).float()
        if self._cache_left >= 12 * n:
            self._buckets[(start, n, str(device))] = out
            self._cache_left -= 12 * n
        return out

    def _block(self, xb: torch.Tensor, start: int, n: int) -> torch.Tensor:
        bucket, sign = self._bucket_sign(start, n, xb.device)
        acc = torch.zeros(xb.shape[0], self.k, dtype=torch.float32, device=xb.device)
        acc.index_add_(1, bucket, xb * sign)
        return acc.double()

    def _cuda_kernels(self, x: torch.Tensor) -> cuda_kernel.CudaKernels | None:
        if not self.cfg.native or x.device.type != "cuda":
            return None
        return cuda_kernel.load(x.device.index if x.device.index is not None else torch.cuda.current_device())

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        """bf16 stays bf16 for the CUDA kernel (it widens exactly, bits << 16): no fp32 copy of a bf16 gradient."""
        return x if x.dtype == torch.bfloat16 and self._cuda_kernels(x) is not None else x.float()

    def _project(self, x: torch.Tensor, offset: int) -> torch.Tensor:
        kernels = self._cuda_kernels(x)
        if kernels is not None:
            x = x if x.stride(-1) == 1 else x.contiguous()
            return cuda_kernel.project(kernels, x, self._cuda_plan(offset, x.shape[1], x.device), self.k).float()
        lib = native.load() if self.cfg.native and x.device.type == "cpu" else None
        return super()._project(x, offset) if lib is None else self._project_native(lib, x.contiguous(), offset)

    def _block_rows(self, offset: int, n: int):
        """(column in x, first coordinate, length, its low word, high-word key) per canonical block."""
        for col, start, length in _blocks(offset, n):
            yield col, start, length, start & _M32, _hi_key(self.cfg.seed, start >> 32, 0)

    def _cuda_plan(self, offset: int, n: int, device: torch.device) -> torch.Tensor:
        """``[nb, 4]`` int64 on ``device``: (column, length, low word, high-word key) per block, kept per range."""
        plan = self._plans.get((offset, n, str(device)))
        if plan is None:
            rows = [[col, length, lo, key] for col, _, length, lo, key in self._block_rows(offset, n)]
            plan = torch.tensor(rows, dtype=torch.int64).reshape(-1, 4).to(device)
            self._plans[(offset, n, str(device))] = plan
        return plan

    def _index_bytes(self) -> int:
        """Bytes per cached c in the C kernel: 2 (uint16) when 2k <= 65536, else 4."""
        return 2 if 2 * self.k <= 1 << 16 else 4

    def _native_plan(self, lib, offset: int, n: int) -> torch.Tensor:
        """Per canonical block of ``[offset, offset+n)``: (column in x, length, low word of its first coordinate,
        high-word key, address of its cached c or 0), ``[nb, 5]`` int64, kept per range (a gradient stream repeats
        its ranges). c is cached as uint16 bits when 2k <= 65536, else uint32, while the cache budget lasts."""
        plan = self._plans.get((offset, n, "native"))
        if plan is None:
            wide = self._index_bytes()
            rows = []
            for col, start, length, lo, key in self._block_rows(offset, n):
                index = self._buckets.get((start, length, "native"))
                if index is None and self._cache_left >= wide * length:
                    index = torch.empty(length, dtype=torch.int16 if wide == 2 else torch.int32)
                    lib.sjl_buckets(lo, length, key, 2 * self.k, wide, index.data_ptr())
                    self._buckets[(start, length, "native")] = index
                    self._cache_left -= wide * length
                rows.append([col, length, lo, key, 0 if index is None else index.data_ptr()])
            plan = self._plans[(offset, n, "native")] = torch.tensor(rows, dtype=torch.int64).reshape(-1, 5)
        return plan

    def _project_native(self, lib, x: torch.Tensor, offset: int) -> torch.Tensor:
        """The C kernel on ``[B, n]`` contiguous fp32: blocks split into one contiguous group per thread, each
        block's ``[B, k]`` part written to its own slot, then summed in block order in fp64 (``sjl_reduce``)."""
        plan = self._native_plan(lib, offset, x.shape[1])
        nb, rows = plan.shape[0], x.shape[0]
        if nb == 0:
            return torch.zeros(rows, self.k)
        part = torch.empty(nb, rows, self.k, dtype=torch.float32)
        wide = self._index_bytes()

        def run(first: int, last: int) -> None:
            lib.sjl_blocks(x.data_ptr(), x.stride(0), rows, last - first, plan[first].data_ptr(), wide, 2 * self.k,
                           part[first].data_ptr())

        threads = min(self.threads(), nb)
        bounds = [nb * t // threads for t in range(threads + 1)]
        if threads > 1:
            list(_thread_pool(threads).map(run, bounds[:-1], bounds[1:]))
        else:
            run(0, nb)
        total = torch.empty(rows, self.k, dtype=torch.float64)
        lib.sjl_reduce(part.data_ptr(), nb, rows * self.k, total.data_ptr())
        return total.float()


class DenseJL(BlockwiseProjector):
    """Dense JL on (a hashed subset of) the coordinates; the matrix block is regenerated from the seed."""

    def __init__(self, cfg: ProjectorConfig, dist: str, subset_ratio: float | None):
        super().__init__(cfg)
        self.dist = dist
        self.ratio = subset_ratio

    def _kept(self, start: int, n: int, device) -> torch.Tensor:
        """Mask of the coordinates start..start+n-1 kept by the subset (all of them without a subset)."""
        if self.ratio is None:
            return torch.ones(n, dtype=torch.bool, device=device)
        u = coordinate_hash(self.cfg.seed, start, n, device, stream=1)
        return (u & 0x7FFFFFFF).double() < self.ratio * 2**31

    def _matrix(self, sub: int, n_rows: int) -> torch.Tensor:
        """The ``[n_rows, k]`` matrix of aligned sub-block ``sub`` (one row per kept coordinate, in order)."""
        gen = torch.Generator(device="cpu").manual_seed(self.cfg.seed * 1_000_003 + sub)
        if self.dist == "gaussian":
            mat = torch.randn(n_rows, self.k, generator=gen)
        else:
            mat = torch.randn(n_rows, self.k, generator=gen).sign_()  # +-1 with probability 1/2 each
        return mat / math.sqrt(self.k * (self.ratio or 1.0))  # keeps E<Px, Py> = <x, y> after subsetting

    def _block(self, xb: torch.Tensor, start: int, n: int) -> torch.Tensor:
        out = torch.zeros(xb.shape[0], self.k, dtype=torch.float64, device=xb.device)
        first, last = start // MATRIX_ROWS, (start + n - 1) // MATRIX_ROWS
        for sub in range(first, last + 1):
            s0 = sub * MATRIX_ROWS
            kept = self._kept(s0, MATRIX_ROWS, xb.device)  # the whole aligned sub-block defines row numbering
            lo, hi = max(start, s0), min(start + n, s0 + MATRIX_ROWS)
            rank = torch.cumsum(kept.long(), 0) - 1
            local = torch.arange(lo - s0, hi - s0, device=xb.device)
            local = local[kept[local]]
            if local.numel() == 0:
                continue
            mat = self._matrix(sub, int(kept.sum()))[rank[local].cpu()].to(xb.device)
            out += (xb[:, local + s0 - start] @ mat).double()
        return out


class Identity(Projector):
    def __init__(self, cfg: ProjectorConfig):
        super().__init__(ProjectorConfig(**(asdict(cfg) | {"k": cfg.dim})))

    def _project(self, x: torch.Tensor, offset: int) -> torch.Tensor:
        out = torch.zeros(x.shape[0], self.k, dtype=torch.float32, device=x.device)
        out[:, offset : offset + x.shape[1]] = x
        return out


METHODS = ("sparse_jl", "subset_gaussian", "subset_rademacher", "gaussian", "identity")
DENSE_MAX_ELEMENTS = 1 << 31  # refuse a dense matrix (d x k) larger than this


def make_projector(
    method: str = "sparse_jl",
    dim: int = 0,
    k: int = 8192,
    seed: int = 0,
    subset_ratio: float = 0.15,
    chunk_size: int = 1 << 20,
    threads: int = 0,
    native: bool = True,
) -> Projector:
    """The projector named ``method`` for d = ``dim`` coordinates into R^k (see the module docstring)."""
    cfg = ProjectorConfig(method, dim, k, seed, subset_ratio, chunk_size, threads, native)
    if method == "sparse_jl":
        return SparseJL(cfg)
    if method in ("subset_gaussian", "subset_rademacher"):
        if not 0 < subset_ratio <= 1:
            raise ValueError(f"subset_ratio must be in (0, 1], got {subset_ratio}")
        return DenseJL(cfg, method.removeprefix("subset_"), subset_ratio)
    if method == "gaussian":
        if dim * k > DENSE_MAX_ELEMENTS:
            raise ValueError(f"gaussian projection of d={dim} to k={k} needs a {dim * k:.2e}-entry matrix; "
                             "use sparse_jl for large models")
        return DenseJL(cfg, "gaussian", None)
    if method == "identity":
        return Identity(cfg)
    raise ValueError(f"unknown projection method {method!r}; expected one of {METHODS}")
