"""Entry-point error handling: bad input ends a command with one clear line, not a traceback.

Errors raised for bad input in this package are ``ValueError``s (``DataValidationError``, manifest mismatches,
config checks) or missing files. ``CROPI_DEBUG=1`` re-raises them with the full traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import wraps
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")


def one_line_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Run ``fn``; on ValueError / FileNotFoundError print ``error: <message>`` to stderr and exit with status 2."""

    @wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, FileNotFoundError) as e:
            if os.environ.get("CROPI_DEBUG"):
                raise
            print(f"error: {e}  (CROPI_DEBUG=1 shows the traceback)", file=sys.stderr)
            sys.exit(2)

    return run


def named_paths(parser: argparse.ArgumentParser, items: Sequence[str], flag: str) -> dict[str, str]:
    """``NAME=PATH`` arguments of a repeated ``flag`` as {NAME: PATH}; a malformed one is a usage error."""
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name:
            parser.error(f"{flag} expects NAME=PATH, got {item!r}")
        out[name] = path
    return out
