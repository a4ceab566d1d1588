"""A method run's settings, kept beside its results so that a rerun with other settings never reuses or resumes them.

``<out>/<method>[.seed<s>]/run_config.json`` holds the flat ``{dotted key: value}`` of the resolved demo config
that decides the run's results: every key but the execution-only ones (``EXECUTION_ONLY``: where outputs go,
which methods run, thread and worker counts, logging and checkpoint intervals, the C kernel switch, which gives the
same bits), and but ``influence.*`` for strategies that never score; plus the strategy and the run's seed. A
directory that holds results (``result.json`` or ``ckpt/``) is refused when its settings differ, or when it has no
``run_config.json`` (written by an older version).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cropi_verl.curriculum.schedule import INFLUENCE_STRATEGIES
from cropi_verl.utils.atomic import atomic_write_json

EXECUTION_ONLY = ("run_name", "output_dir", "methods", "repeats", "seed", "threads", "policy.cache_dir",
                  "influence.workers", "influence.threads_per_worker", "influence.native", "train.loggers",
                  "train.log_every", "train.ckpt_every", "eval.speedup_gain_fraction")
FILE = "run_config.json"


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    return {k: v for key, child in node.items() for k, v in _flat(child, f"{prefix}{key}.").items()}


def run_config(cfg: DictConfig, strategy: str, seed: int) -> dict[str, Any]:
    """The settings that decide the results of ``strategy`` run with training seed ``seed`` (module docstring)."""
    flat = {k.rstrip("."): v for k, v in _flat(OmegaConf.to_container(cfg, resolve=True)).items()}
    keep = {k: v for k, v in flat.items()
            if not any(k == d or k.startswith(d + ".") for d in EXECUTION_ONLY)
            and (strategy in INFLUENCE_STRATEGIES or not k.startswith("influence."))}
    return keep | {"strategy": strategy, "seed": seed}


def check_run_dir(run_dir: Path, want: dict[str, Any]) -> None:
    """Raise if ``run_dir`` holds results made with settings other than ``want`` (or with none recorded)."""
    if not ((run_dir / "result.json").is_file() or (run_dir / "ckpt").is_dir()):
        return
    path = run_dir / FILE
    if not path.is_file():
        raise ValueError(f"{run_dir}: holds results but no {FILE} (written by an older version); delete it or "
                         "choose another run_name")
    have = json.loads(path.read_text())
    diff = sorted(k for k in have.keys() | want.keys() if k not in have or k not in want or have[k] != want[k])
    if diff:
        show = diff[:6]
        was = ", ".join(f"{k}={have.get(k, '<unset>')!r}" for k in show)
        now = ", ".join(f"{k}={want.get(k, '<unset>')!r}" for k in show)
        more = f" (and {len(diff) - len(show)} more)" if len(diff) > len(show) else ""
        raise ValueError(f"{run_dir}: its results were made with {was}{more}; this command has {now}. Choose another "
                         f"run_name, or delete {run_dir} to redo it")


def write_run_config(run_dir: Path, want: dict[str, Any]) -> None:
    """Record ``want`` beside the run's results (atomically), before any of them is written."""
    atomic_write_json(want, run_dir / FILE)
