"""Entry-point handling: bad input or an interruption ends a command with one clear line, not a traceback.

Known errors are ``ValueError``s (``DataValidationError``, manifest mismatches, config checks, unreadable parquet
files) and ``OSError``s (a missing file or model, an unwritable directory): ``error: <message>`` on one line, exit
status 2. Any other exception is a bug and keeps its traceback; ``CROPI_DEBUG=1`` re-raises the known ones too.
Ctrl-C (SIGINT) and SIGTERM end it with one line, what finished and where it stopped (the ``step``s the command
recorded), exit status 130 / 143. ``run_hydra`` does the same for what hydra refuses before a ``@hydra.main`` entry
point runs (a mistyped key, a malformed override, a missing config group option).
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import signal
import sys
import tempfile
import threading
from contextlib import contextmanager
from functools import partial, wraps
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

T = TypeVar("T")
EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}
RERUN = {True: "rerun the same command to resume", False: "rerun the same command to start over"}
_steps: list[str] = []  # the steps the command started, the last one running
_step_detail: Callable[[], str] | None = None  # what the running step adds to an interruption's line
_handling_sigterm = False  # whether one_line_errors installed its SIGTERM handler in this process
_terminated = False  # whether that handler ran


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread and handled as Ctrl-C is."""


def _raise_terminated(signum, frame) -> None:
    global _terminated
    _terminated = True  # Ray's ray.get re-raises a handler's KeyboardInterrupt as a plain one
    raise Terminated()


def _handle_sigterm() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def restore_sigterm_handler() -> None:
    """Put ``one_line_errors``' SIGTERM handler back after ``ray.init`` replaced it (Ray's dumps a crash report and
    aborts); a no-op in a process that never installed it."""
    if _handling_sigterm:
        _handle_sigterm()


@contextmanager
def sigterm_handler_kept_across_ray_init() -> Iterator[None]:
    """Within the block, ``restore_sigterm_handler`` follows every ``ray.init`` (such as the one in verl's
    ``run_ppo``, which an entry point cannot reach otherwise)."""
    import ray

    init = ray.init

    def init_then_restore(*args, **kwargs):
        try:
            return init(*args, **kwargs)
        except SystemExit as e:  # ray.init's own handler, in place while it starts the cluster, exits with 15
            if e.code == signal.SIGTERM:
                raise Terminated() from None
            raise
        finally:
            restore_sigterm_handler()

    ray.init = init_then_restore
    try:
        yield
    finally:
        ray.init = init


def step(what: str, detail: Callable[[], str] | None = None) -> None:
    """Record that the command starts ``what`` (the previous step finished), for the line an interruption prints;
    ``detail()``, called only then, adds what the step had reached (e.g. its latest checkpoint)."""
    global _step_detail
    _steps.append(what)
    _step_detail = detail


def interrupted_line(sig: signal.Signals, resumes: bool) -> str:
    """What finished, where it stopped, and how to go on."""
    where = f"during {_steps[-1]}" if _steps else "before its first step"
    if _steps and _step_detail is not None:
        where += f" ({_step_detail()})"
    return f"interrupted by {sig.name} {where}; finished: {', '.join(_steps[:-1]) or 'nothing'}; {RERUN[resumes]}"


def one_line(message: str) -> str:
    """A message on one line: its first line, then the others joined by '; '."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return " ".join(lines[:1] + ["; ".join(lines[1:])]).strip()


def _stop_ray() -> None:
    """Shut down the Ray this process started or joined, if any (its workers stop, and their output with them). A
    failed shutdown is ignored: the command is ending, and its line says why."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        try:
            ray.shutdown()
        except Exception:  # noqa: BLE001 - the line that follows says why the command ended
            pass


def one_line_errors(fn: Callable[..., T] | None = None, *, resumes: bool = True) -> Callable[..., T]:
    """Run ``fn`` (an entry point); a known error prints ``error: <message>`` to stderr and exits with status 2,
    Ctrl-C or SIGTERM prints ``interrupted_line`` (``resumes``: whether a rerun goes on from where it stopped) and
    exits with 130 / 143. Use bare or as ``@one_line_errors(resumes=False)``."""
    if fn is None:
        return partial(one_line_errors, resumes=resumes)

    @wraps(fn)
    def run(*args, **kwargs):
        global _handling_sigterm, _terminated
        _handling_sigterm, _terminated = True, False
        _handle_sigterm()
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # a background job of a script (the recipes' steps)
            signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt as e:
            if os.environ.get("CROPI_DEBUG"):
                raise
            sig = signal.SIGTERM if isinstance(e, Terminated) or _terminated else signal.SIGINT
            line, status = interrupted_line(sig, resumes), EXIT_STATUS[sig]
        except (ValueError, OSError) as e:
            if os.environ.get("CROPI_DEBUG"):
                raise
            line, status = f"error: {one_line(str(e))}  (CROPI_DEBUG=1 shows the traceback)", 2
        for sig in EXIT_STATUS:  # a second Ctrl-C or SIGTERM does not cut the line short
            signal.signal(sig, signal.SIG_IGN)
        _stop_ray()  # its workers' forwarded output would come after the line
        print(line, file=sys.stderr)  # out of the handler, the call's frames are freed: its progress bars print first
        sys.exit(status)

    return run


def hydra_error_line(error: Exception, config_name: str, groups: Sequence[str] | None = None) -> str:
    """Hydra's refusal of an override on one line. A key that ``configs/<config_name>.yaml`` lacks in a group we own
    (``groups``; None: all) reads as our own config checks read (``<group> has unknown keys [...]: expected
    [...]``), not as hydra's advice to add it with ``+``; a missing option lists the available ones, without
    hydra's search path."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    from cropi_verl.utils.config_rules import shipped_keys, unknown_keys

    cause = error.__cause__
    key = getattr(cause, "full_key", None) if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) else None
    if key and key.split(".")[0] != "hydra" and (groups is None or key.split(".")[0] in groups):
        nested: dict = {}
        node = nested
        for part in key.split(".")[:-1]:
            node = node.setdefault(part, {})
        node[key.split(".")[-1]] = None
        problems = unknown_keys(nested, shipped_keys(config_name))
        if problems:
            return f"bad override {key}: {problems[0]}"
    text = re.sub(r":\s*\n\t", ": ", str(error).split("Config search path:")[0]).replace("\n\t", ", ")
    reason = str(cause).strip().splitlines()[0] if cause is not None and str(cause).strip() else ""
    if reason and reason not in text:
        text += f"; {reason}"  # e.g. "Value 'maybe' is not a valid bool"
    override = getattr(error, "override", None)  # a malformed override (hydra's OverrideParseException)
    if override and ("token recognition error" in text or "LexerNoViableAlt" in text):
        key, _, value = override.partition("=")
        text += f"; quote a value with spaces or non-ASCII letters: {key}='{value}'"
    return f"bad override{' ' + override if override else ''}: {one_line(text)}"


def run_hydra(main: Callable[[], None], config_name: str, groups: Sequence[str] | None = None) -> None:
    """Run the ``@hydra.main`` entry point ``main`` of ``configs/<config_name>.yaml``: what hydra refuses before
    ``main``'s body runs is ``error: <hydra_error_line>``, exit status 2 (hydra raises it instead of printing it
    with ``HYDRA_FULL_ERROR=1``; a user's own ``HYDRA_FULL_ERROR=1`` or ``CROPI_DEBUG`` keeps hydra's whole report).
    One raised in the body (by then ``one_line_errors`` runs it) is no override's fault: it keeps its traceback."""
    from hydra.errors import HydraException

    full = os.environ.get("HYDRA_FULL_ERROR") == "1" or os.environ.get("CROPI_DEBUG")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except HydraException as e:
        if full or _handling_sigterm:
            raise
        print(f"error: {hydra_error_line(e, config_name, groups)}  (CROPI_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        sys.exit(2)


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
    """``NAME=PATH`` arguments of a repeated ``flag`` as {NAME: PATH}; a malformed one, or a NAME given twice, is a
    usage error (never the last one silently)."""
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name:
            parser.error(f"{flag} expects NAME=PATH, got {item!r}")
        if name in out:
            parser.error(f"{flag} names {name!r} twice ({out[name]} and {path}): give each set once")
        out[name] = path
    return out
