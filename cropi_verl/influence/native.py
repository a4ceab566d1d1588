"""The CPU kernel of ``sparse_jl`` (``sparse_jl.c``), compiled on first use with the system C compiler and loaded
with ctypes (which releases the GIL during a call, so threads run blocks in parallel).

The shared library is cached under ``$CROPI_CACHE_DIR/native/`` (default ``~/.cache/cropi_verl/native/``), named by
a hash of the source, the compiler command and the machine; it is built into a temp file and renamed, so
concurrent workers never load a half-written one. Without a compiler (or with ``CROPI_NATIVE=0``) ``load()``
returns None, logs why once, and the projector uses its torch path, which gives the same bits.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sysconfig
from functools import lru_cache
from pathlib import Path

from cropi_verl.utils.atomic import atomic_path
from cropi_verl.utils.cache import cache_root

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("sparse_jl.c")
HEADER = SOURCE.with_name("sparse_jl_hash.h")  # shared with the CUDA kernel
FLAGS = ["-O3", "-shared", "-fPIC", "-std=c99"]


def compiler() -> list[str]:
    """``$CC``, else the compiler Python was built with, else ``cc``."""
    if os.environ.get("CC"):
        return shlex.split(os.environ["CC"])
    built_with = shlex.split(sysconfig.get_config_var("CC") or "")
    return built_with if built_with and shutil.which(built_with[0]) else ["cc"]


def _build(out: Path) -> None:
    cmd = [*compiler(), *FLAGS, str(SOURCE), "-o"]
    with atomic_path(out) as tmp:
        res = subprocess.run([*cmd, str(tmp)], capture_output=True, text=True)
        if res.returncode != 0:
            raise OSError(f"{' '.join(cmd)} {out} failed: {res.stderr.strip().splitlines()[-1:] or res.returncode}")


@lru_cache(maxsize=1)
def load() -> ctypes.CDLL | None:
    """The compiled kernel, or None (logged once) when it cannot be built or ``CROPI_NATIVE=0``."""
    if os.environ.get("CROPI_NATIVE", "1") == "0":
        log.info("sparse_jl native kernel disabled by CROPI_NATIVE=0; using the torch path")
        return None
    tag = hashlib.sha256(SOURCE.read_bytes() + HEADER.read_bytes() + " ".join(compiler() + FLAGS).encode()
                         + platform.machine().encode() + platform.system().encode()).hexdigest()[:16]
    path = cache_root() / "native" / f"sparse_jl-{tag}.so"
    try:
        if not path.exists():
            _build(path)
        lib = ctypes.CDLL(str(path))
    except (OSError, FileNotFoundError) as e:
        log.warning("sparse_jl native kernel unavailable (%s); using the torch path (same results, slower)", e)
        return None
    i64, u32, vp = ctypes.c_int64, ctypes.c_uint32, ctypes.c_void_p
    lib.sjl_buckets.argtypes = [u32, i64, u32, i64, ctypes.c_int, vp]
    lib.sjl_blocks.argtypes = [vp, i64, i64, i64, vp, ctypes.c_int, i64, vp]
    lib.sjl_reduce.argtypes = [vp, i64, i64, vp]
    for fn in (lib.sjl_buckets, lib.sjl_blocks, lib.sjl_reduce):
        fn.restype = None
    return lib
