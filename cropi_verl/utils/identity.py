"""What a result was computed from, by content: files and model directories hashed, so that a rerun never reuses a
result made from other inputs that happen to have the same paths.

- ``file_digest(path)``: sha256 of a file's bytes (16 hex digits);
- ``model_digest(model)``: for a local model directory, sha256 over its weight, config and tokenizer files (names and
  bytes, in name order), so that other weights or another tokenizer give another digest; a hub id is kept as it is
  (its files are the hub's, fixed by the id and the revision the run resolves);
- ``ids_digest(ids)``: sha256 of integer ids in order (a pool's prompts, the prompts a pass was given).

Digests are cached per path, size and modification time within a process (a 7B model's weights take seconds).
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

CHUNK = 1 << 24  # bytes read at a time
MODEL_FILES = ("*.safetensors", "*.bin", "*.json", "*.model", "*.txt", "*.tiktoken")  # weights, configs, tokenizers


def _sha256(paths: list[Path], root: Path | None = None) -> str:
    h = hashlib.sha256()
    for p in paths:
        if root is not None:
            h.update(str(p.relative_to(root)).encode() + b"\0")
        with open(p, "rb") as f:
            while block := f.read(CHUNK):
                h.update(block)
    return h.hexdigest()[:16]


@lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime: int) -> str:
    return _sha256([Path(path)])


def file_digest(path: str | Path) -> str:
    """sha256 of the file's bytes (16 hex digits)."""
    st = os.stat(path)
    return _file_digest(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=16)
def _dir_digest(path: str, stamp: tuple) -> str:
    root = Path(path)
    files = sorted({p for pattern in MODEL_FILES for p in root.glob(pattern) if p.is_file()})
    return _sha256(files, root)


def model_digest(model: str | Path) -> str:
    """sha256 over a local model directory's weight, config and tokenizer files; a hub id as it is."""
    root = Path(model).expanduser()
    if not root.is_dir():
        return str(model)
    stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.iterdir()) if p.is_file())
    return _dir_digest(str(root.resolve()), stamp)


def ids_digest(ids) -> str:
    """A short digest of a sequence of integer ids, in order (int64 bytes): equal for the same ids."""
    return hashlib.sha256(np.ascontiguousarray(np.asarray(ids, dtype=np.int64)).tobytes()).hexdigest()[:16]
