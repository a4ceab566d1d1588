"""One run per output directory at a time: ``<dir>/.cropi.lock`` holds the running command's pid, host and start.

``run_lock(dir, what)`` creates it atomically, record included (a hard link that fails when it exists), for the
block and removes it after. A second command meets it at once and stops with one line naming the holder. A lock
whose holder is gone (same host, no such process) is stale: it is replaced, with a warning, so a killed run never
blocks the next.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)
LOCK = ".cropi.lock"


class RunDirectoryBusy(ValueError):
    """Another command is writing into the same directory."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _take(path: Path, what: str) -> None:
    """Create ``path`` with its holder record in one step (a hard link of a finished temp file: ``FileExistsError``
    when it exists), so no other command ever reads it empty."""
    tmp = path.with_name(f"{LOCK}.{socket.gethostname()}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                               "started": time.strftime("%Y-%m-%d %H:%M:%S"), "what": what}))
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # a filesystem without hard links (some FUSE mounts): an exclusive create, the record just after
        with open(path, "x") as f:
            f.write(tmp.read_text())
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def run_lock(directory: str | Path, what: str) -> Iterator[None]:
    """Hold ``<directory>/.cropi.lock`` for the block (module docstring); ``what`` names the command."""
    path = Path(directory) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            _take(path, what)
            break
        except FileExistsError:
            try:
                holder = json.loads(path.read_text())
            except (OSError, ValueError):
                holder = {}
            same_host = holder.get("host") == socket.gethostname()
            if holder and same_host and isinstance(holder.get("pid"), int) and _alive(holder["pid"]):
                raise RunDirectoryBusy(
                    f"{directory} is in use by {holder.get('what', 'another run')} (pid {holder['pid']} on "
                    f"{holder['host']}, since {holder.get('started')}): wait for it, or use another directory") from None
            if holder and not same_host:
                raise RunDirectoryBusy(
                    f"{directory} is in use by {holder.get('what', 'another run')} on host {holder.get('host')} (pid "
                    f"{holder.get('pid')}, since {holder.get('started')}); if that run is gone, delete {path}") from None
            log.warning("%s: removing a stale lock (%s)", path, holder or "unreadable")
            path.unlink(missing_ok=True)
    else:
        raise RunDirectoryBusy(f"{path}: could not take the lock")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
