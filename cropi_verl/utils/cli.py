"""Entry-point handling: bad input or an interruption ends a command with one clear line, not a traceback.

Known errors are ``ValueError``s (``DataValidationError``, manifest mismatches, config checks, unreadable parquet
files) and ``OSError``s (a missing file or model, an unwritable directory): ``error: <message>`` on one line, exit
status 2. Any other exception is a bug and keeps its traceback; ``CROPI_DEBUG=1`` re-raises the known ones too.
Ctrl-C (SIGINT) and SIGTERM end it with one line, what finished and where it stopped (the ``step``s the command
recorded), exit status 130 / 143.
"""

from __future__ import annotations

import argparse
import copy
import os
import signal
import sys
import tempfile
import threading
from functools import partial, wraps
from pathlib import Path
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")
EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}
RERUN = {True: "rerun the same command to resume", False: "rerun the same command to start over"}
_steps: list[str] = []  # the steps the command started, the last one running
_handling_sigterm = False  # whether one_line_errors installed its SIGTERM handler in this process


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread and handled as Ctrl-C is."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _handle_sigterm() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def restore_sigterm_handler() -> None:
    """Put ``one_line_errors``' SIGTERM handler back after ``ray.init`` replaced it (Ray's dumps a crash report and
    aborts); a no-op in a process that never installed it."""
    if _handling_sigterm:
        _handle_sigterm()


def step(what: str) -> None:
    """Record that the command starts ``what`` (the previous step finished), for the line an interruption prints."""
    _steps.append(what)


def interrupted_line(sig: signal.Signals, resumes: bool) -> str:
    """What finished, where it stopped, and how to go on."""
    where = f"during {_steps[-1]}" if _steps else "before its first step"
    return f"interrupted by {sig.name} {where}; finished: {', '.join(_steps[:-1]) or 'nothing'}; {RERUN[resumes]}"


def one_line(message: str) -> str:
    """A message on one line: its first line, then the others joined by '; '."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return " ".join(lines[:1] + ["; ".join(lines[1:])]).strip()


def one_line_errors(fn: Callable[..., T] | None = None, *, resumes: bool = True) -> Callable[..., T]:
    """Run ``fn`` (an entry point); a known error prints ``error: <message>`` to stderr and exits with status 2,
    Ctrl-C or SIGTERM prints ``interrupted_line`` (``resumes``: whether a rerun goes on from where it stopped) and
    exits with 130 / 143. Use bare or as ``@one_line_errors(resumes=False)``."""
    if fn is None:
        return partial(one_line_errors, resumes=resumes)

    @wraps(fn)
    def run(*args, **kwargs):
        global _handling_sigterm
        _handling_sigterm = True
        _handle_sigterm()
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt as e:
            if os.environ.get("CROPI_DEBUG"):
                raise
            sig = signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT
            line, status = interrupted_line(sig, resumes), EXIT_STATUS[sig]
        except (ValueError, OSError) as e:
            if os.environ.get("CROPI_DEBUG"):
                raise
            line, status = f"error: {one_line(str(e))}  (CROPI_DEBUG=1 shows the traceback)", 2
        print(line, file=sys.stderr)  # out of the handler, the call's frames are freed: its progress bars print first
        sys.exit(status)

    return run


def check_writable(path: str | Path, what: str) -> None:
    """Raise ``ValueError`` unless the directory ``path`` can be written (or created): its nearest existing
    ancestor must be a directory in which a file can be made. For the outputs of a command, before any work."""
    path = Path(path)
    probe = next(p for p in [path, *path.parents] if p.exists())
    if not probe.is_dir():
        raise ValueError(f"{what} {path}: {probe} is not a directory")
    try:
        tempfile.TemporaryFile(dir=probe).close()
    except OSError as e:
        raise ValueError(f"{what} {path}: cannot write in {probe} ({e.strerror})") from None


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``--help`` of the scripts: the module docstring (and epilog) as written, so example commands keep their lines,
    and each option's default, also for an option without a help text (none for a default of None)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)

    def _format_action(self, action: argparse.Action) -> str:
        if (action.help is None and action.option_strings and action.default is not None
                and action.default is not argparse.SUPPRESS):
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)


def named_paths(parser: argparse.ArgumentParser, items: Sequence[str], flag: str) -> dict[str, str]:
    """``NAME=PATH`` arguments of a repeated ``flag`` as {NAME: PATH}; a malformed one is a usage error."""
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name:
            parser.error(f"{flag} expects NAME=PATH, got {item!r}")
        out[name] = path
    return out
