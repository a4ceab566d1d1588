"""``CROPI_TRACE=<file>``: processes append one JSON line per traced event (``time.time()``, pid, event, fields).

Used to check, across the trainer and the Ray actors of one machine, the order of events that no single process
sees, e.g. that no influence pass runs while a rollout replica holds weights. Appends of one short line are atomic
(``O_APPEND``), so the file's line order is the events' order.
"""

from __future__ import annotations

import json
import os
import time


def trace(event: str, **fields) -> None:
    """Append ``event`` to ``$CROPI_TRACE`` (nothing when it is unset)."""
    path = os.environ.get("CROPI_TRACE")
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps({"time": time.time(), "pid": os.getpid(), "event": event, **fields}) + "\n")


def read_trace(path: str | os.PathLike) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
