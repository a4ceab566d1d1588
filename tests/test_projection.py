"""Projector properties against independent references: the scalar hash, a dense CountSketch matrix, JL bounds."""

from __future__ import annotations

import logging
import math
import shutil

import numpy as np
import pytest
import torch

from cropi_verl.influence import native
from cropi_verl.influence.projection import (
    BLOCK,
    METHODS,
    coordinate_hash,
    coordinate_hash_int,
    make_projector,
)


def test_int32_hash_matches_scalar_reference():
    for seed, start in [(0, 0), (7, 12345), (3, 2**32 - 5), (1, 2**33 + 11)]:
        n = 5 if start == 2**32 - 5 else 64
        got = [h & 0xFFFFFFFF for h in coordinate_hash(seed, start, n).tolist()]
        assert got == [coordinate_hash_int(seed, start + i) for i in range(n)]


def test_sparse_jl_equals_dense_countsketch_matrix():
    """Build the CountSketch matrix from the scalar hash and compare with project()."""
    d, k, seed = 3000, 16, 5
    mat = torch.zeros(d, k, dtype=torch.float64)
    for i in range(d):
        c = coordinate_hash_int(seed, i) % (2 * k)
        mat[i, c // 2] = 1.0 if c % 2 == 0 else -1.0
    x = torch.randn(4, d)
    p = make_projector("sparse_jl", d, k, seed)
    torch.testing.assert_close(p.project(x), (x.double() @ mat).float(), rtol=1e-5, atol=1e-5)


def _sequential_countsketch(x: np.ndarray, offset: int, k: int, seed: int) -> np.ndarray:
    """The exact bits sparse_jl promises, by hand: per canonical block one fp32 running sum per bucket in
    coordinate order of s(i) x_i, then the blocks added in fp64 in block order."""
    total = np.zeros(k, dtype=np.float64)
    pos = offset
    while pos < offset + len(x):
        end = min((pos // BLOCK + 1) * BLOCK, offset + len(x))
        acc = np.zeros(k, dtype=np.float32)
        for i in range(pos, end):
            c = (coordinate_hash_int(seed, i) & 0x7FFFFFFF) % (2 * k)
            acc[c >> 1] = np.float32(acc[c >> 1] + (x[i - offset] if c % 2 == 0 else -x[i - offset]))
        total += acc.astype(np.float64)
        pos = end
    return total.astype(np.float32)


@pytest.mark.parametrize("use_native", [True, False])
def test_sparse_jl_bits_equal_a_sequential_reference(use_native):
    """Across a canonical block boundary and a 2^32 boundary of the hash's high word, both code paths."""
    k, seed = 24, 3
    for offset, n in [(BLOCK - 700, 1500), (2**32 - 300, 600)]:
        x = torch.randn(n)
        got = make_projector("sparse_jl", offset + n, k, seed, native=use_native).project(x, offset)
        assert np.array_equal(got.numpy(), _sequential_countsketch(x.numpy(), offset, k, seed))


def _native_or_skip():
    lib = native.load()
    if lib is None and shutil.which(native.compiler()[0]) is None:
        pytest.skip("no C compiler: the native sparse_jl kernel cannot be built here")
    assert lib is not None, "a C compiler is present but the native sparse_jl kernel did not build"
    return lib


@pytest.mark.parametrize("k", [256, 3000, 40000])  # power of two; not (mod); 2k > 65536 (uint32 index)
def test_native_kernel_gives_the_torch_bits(k):
    _native_or_skip()
    d = 3 * BLOCK + 777
    x = torch.randn(3, d - 1234)
    ref = make_projector("sparse_jl", d, k, seed=4, native=False).project(x, 1234)
    for threads, cached in [(1, True), (2, True), (2, False)]:
        p = make_projector("sparse_jl", d, k, seed=4, native=True, threads=threads)
        if not cached:
            p._cache_left = 0  # the kernel hashes on the fly
        assert torch.equal(p.project(x, 1234), ref)
        assert torch.equal(p.project(x[1], 1234), ref[1])


def test_native_kernel_falls_back_to_torch_with_one_log_line(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("CROPI_CACHE_DIR", str(tmp_path))
    x = torch.randn(5000)
    ref = make_projector("sparse_jl", 5000, 64, seed=2, native=False).project(x)
    for env, expected in [({"CROPI_NATIVE": "0"}, "disabled by CROPI_NATIVE=0"),
                          ({"CC": "false"}, "native kernel unavailable")]:
        for key, val in env.items():
            monkeypatch.setenv(key, val)
        native.load.cache_clear()
        try:
            with caplog.at_level(logging.INFO, logger=native.__name__):
                caplog.clear()
                assert native.load() is None
                assert torch.equal(make_projector("sparse_jl", 5000, 64, seed=2).project(x), ref)
            assert [r.getMessage() for r in caplog.records if expected in r.getMessage()]
        finally:
            for key in env:
                monkeypatch.delenv(key)
            native.load.cache_clear()
    assert not list(tmp_path.rglob("*.tmp"))  # the failed build left no half-written library


@pytest.mark.parametrize("method", ["sparse_jl", "subset_gaussian", "subset_rademacher", "gaussian"])
def test_offset_additivity(method):
    d = BLOCK + 5000  # crosses a canonical block boundary
    p = make_projector(method, d, 32, seed=1, subset_ratio=0.5)
    x = torch.randn(d)
    cut = BLOCK - 123
    whole = p.project(x)
    pieces = p.project(x[:cut], 0) + p.project(x[cut:], cut)
    torch.testing.assert_close(pieces, whole, rtol=1e-4, atol=1e-4)


def test_bit_identical_across_chunk_sizes_and_threads():
    d = 3 * BLOCK + 777
    x = torch.randn(2, d)
    outs = [
        make_projector("sparse_jl", d, 256, seed=9, chunk_size=cs, threads=t, native=nat).project(x)
        for cs, t in [(BLOCK, 1), (4 * BLOCK, 1), (BLOCK, 2), (1 << 24, 2)] for nat in (False, True)
    ]
    for o in outs[1:]:
        assert torch.equal(o, outs[0])


def test_identity_is_exact():
    x = torch.randn(3, 10)
    p = make_projector("identity", 25, k=1)
    out = p.project(x, offset=7)
    assert out.shape == (3, 25) and torch.equal(out[:, 7:17], x) and out[:, :7].abs().sum() == 0


@pytest.mark.parametrize("method", ["sparse_jl", "subset_rademacher"])
def test_jl_inner_product_error_within_bound(method):
    """Over 200 seeds: E<Px,Py> = <x,y> and the error std <= the CountSketch/JL bound sqrt(2/k)|x||y|."""
    d, k = 2000, 128
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(d, generator=g), torch.randn(d, generator=g)
    y = 0.6 * x + 0.8 * y  # correlated pair
    exact = float(x @ y)
    errs = []
    for seed in range(200):
        p = make_projector(method, d, k, seed, subset_ratio=1.0)
        errs.append(float(p.project(x) @ p.project(y)) - exact)
    errs = torch.tensor(errs)
    bound = math.sqrt(2.0 / k) * float(x.norm() * y.norm())
    assert abs(float(errs.mean())) < 4 * bound / math.sqrt(200)  # unbiased
    assert float(errs.std()) <= 1.2 * bound


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="unknown projection method 'fast_jl'"):
        make_projector("fast_jl", 10, 4)
    with pytest.raises(ValueError, match="needs a .*-entry matrix"):
        make_projector("gaussian", 10**9, 8192)
    p = make_projector("sparse_jl", 100, 4)
    with pytest.raises(ValueError, match=r"coordinates \[90, 110\) outside the projector's dim 100"):
        p.project(torch.zeros(20), offset=90)
    assert set(METHODS) == {"sparse_jl", "subset_gaussian", "subset_rademacher", "gaussian", "identity"}


def test_native_false_never_touches_the_kernel(monkeypatch):
    """``native=False`` (config key ``influence.native`` / ``cropi.projection.native``) keeps the torch path."""
    def refuse():
        raise AssertionError("the C kernel was loaded with native=False")

    monkeypatch.setattr(native, "load", refuse)
    x = torch.randn(3000)
    out = make_projector("sparse_jl", 3000, 16, seed=5, native=False).project(x)
    assert np.array_equal(out.numpy(), _sequential_countsketch(x.numpy(), 0, 16, 5))


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _cuda_kernels_or_fail():
    from cropi_verl.influence import cuda_kernel

    kernels = cuda_kernel.load(torch.cuda.current_device())
    assert kernels is not None, "the sparse_jl CUDA kernel did not compile (see the log line)"
    return kernels


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("k", [4, 24, 3000])  # k = 4: dozens of coordinates share a bucket in every step
def test_cuda_kernel_bits_equal_a_sequential_reference(k):
    _cuda_kernels_or_fail()
    seed = 3
    for offset, n in [(BLOCK - 700, 1500), (2**32 - 300, 600)]:
        x = torch.randn(n)
        got = make_projector("sparse_jl", offset + n, k, seed).project(x.cuda(), offset).cpu()
        assert np.array_equal(got.numpy(), _sequential_countsketch(x.numpy(), offset, k, seed))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("k", [256, 3000, 8192, 32768, 40000])  # k > 8192: buckets split over several CTAs
def test_cuda_kernel_gives_the_cpu_bits_for_batches_and_bf16(k):
    """Several blocks, a batch of rows, an unaligned offset, a strided row; bf16 input reads as its exact fp32."""
    _cuda_kernels_or_fail()
    d = 3 * BLOCK + 777
    x = torch.randn(3, d - 1234)
    cpu = make_projector("sparse_jl", d, k, seed=4, native=False)
    gpu = make_projector("sparse_jl", d, k, seed=4)
    assert torch.equal(gpu.project(x.cuda(), 1234).cpu(), cpu.project(x, 1234))
    assert torch.equal(gpu.project(x.cuda()[1], 1234).cpu(), cpu.project(x[1], 1234))
    xb = x.bfloat16()
    assert torch.equal(gpu.project(xb.cuda(), 1234).cpu(), cpu.project(xb.float(), 1234))
    wide = torch.randn(2, 2 * (d - 1234)).cuda()[:, ::2]  # a column stride of 2: copied to unit stride first
    assert torch.equal(gpu.project(wide, 1234).cpu(), cpu.project(wide.cpu(), 1234))


@pytest.mark.gpu
@needs_cuda
def test_cuda_kernel_off_falls_back_to_the_torch_path(monkeypatch):
    from cropi_verl.influence import cuda_kernel

    x = torch.randn(2, BLOCK + 99)
    ref = make_projector("sparse_jl", x.shape[1], 512, seed=1, native=False).project(x)
    monkeypatch.setenv("CROPI_NATIVE", "0")
    cuda_kernel.load.cache_clear()
    try:
        assert cuda_kernel.load(torch.cuda.current_device()) is None
        got = make_projector("sparse_jl", x.shape[1], 512, seed=1).project(x.cuda()).cpu()
    finally:
        monkeypatch.delenv("CROPI_NATIVE")
        cuda_kernel.load.cache_clear()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4)  # the same sketch, atomics in no fixed order
