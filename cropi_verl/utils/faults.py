"""Fault injection for tests: ``CROPI_KILL_AT=<point>:<n>`` SIGKILLs the process the n-th time ``point`` is
reached (n defaults to 1). Points are named where artifacts are written, e.g. ``rollout_shard``."""

from __future__ import annotations

import os
import signal
from collections import Counter

_hits: Counter[str] = Counter()


def kill_point(point: str) -> None:
    """Die here (SIGKILL, no cleanup) if ``CROPI_KILL_AT`` names this point and its count is reached."""
    spec = os.environ.get("CROPI_KILL_AT")
    if not spec:
        return
    name, _, n = spec.partition(":")
    if name != point:
        return
    _hits[point] += 1
    if _hits[point] >= int(n or 1):
        os.kill(os.getpid(), signal.SIGKILL)
