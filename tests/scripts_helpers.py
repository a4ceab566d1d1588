"""Run a project CLI (scripts/*.py) in a subprocess, as a user would."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / name), *args], capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def logged(stdout: str, key: str) -> dict[int, float]:
    """step -> the value verl's console logger printed for ``key``."""
    out = {}
    for line in stdout.splitlines():
        step = re.search(r"step:(\d+) - ", line)
        value = re.search(rf"(?:^| - ){re.escape(key)}:(?:np\.float64\()?([-\d.e]+)", line)
        if step and value:
            out[int(step.group(1))] = float(value.group(1))
    return out
