"""Where the project caches what it builds (the tiny policy, the native projection kernel)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$CROPI_CACHE_DIR``, else ``~/.cache/cropi_verl``."""
    return Path(os.environ.get("CROPI_CACHE_DIR", Path.home() / ".cache" / "cropi_verl"))
