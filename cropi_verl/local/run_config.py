"""A method run's settings, kept beside its results so that a rerun with other settings never reuses or resumes them.

``<out>/<method>[.seed<s>]/run_config.json`` holds the flat ``{dotted key: value}`` of the resolved demo config
that decides the run's results: every key but the execution-only ones (``EXECUTION_ONLY``: where outputs go,
which methods run, thread and worker counts, the wall-time estimate, logging and checkpoint intervals, the C kernel
switch, which gives the same bits), and but ``influence.*`` for strategies that never score and ``curriculum.candidates.*`` unless
``curriculum.rescore`` is ``candidates``; plus the strategy and the run's seed. A
directory that holds results (``result.json`` or ``ckpt/``) is refused when its settings differ, or when it has no
``run_config.json`` (written by an older version); ``refuse_other_settings`` names every such directory in one
error (the demo adds its rollouts directories, whose manifests record their collection settings). Once the policy
and the rollouts exist, the method's run adds their content digests (``inputs``: ``with_inputs``) and compares them
too before it reuses or resumes anything: results made from another policy or other rollouts with the same settings
(another machine type warms the policy up to other bits) are never reused. A key the recorded settings lack (added
to ``configs/tiny_cpu.yaml`` after they were written) is no difference while it holds its shipped default, which
keeps the earlier behaviour.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf

from cropi_verl.curriculum.schedule import INFLUENCE_STRATEGIES
from cropi_verl.utils.atomic import atomic_write_json
from cropi_verl.utils.config_rules import shipped_keys

EXECUTION_ONLY = ("run_name", "output_dir", "methods", "repeats", "seed", "threads", "estimate", "policy.cache_dir",
                  "influence.workers", "influence.threads_per_worker", "influence.native", "train.loggers",
                  "train.log_every", "train.ckpt_every", "eval.speedup_gain_fraction")
FILE = "run_config.json"
INPUTS = "inputs"  # the policy's and the rollouts' digests, known once they are made (``with_inputs``)


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    return {k: v for key, child in node.items() for k, v in _flat(child, f"{prefix}{key}.").items()}


def _dotted(tree: dict) -> dict[str, Any]:
    """``{dotted key: leaf value}`` of a nested dict."""
    return {k.rstrip("."): v for k, v in _flat(tree).items()}


@lru_cache(maxsize=1)
def _shipped_defaults() -> dict[str, Any]:
    """configs/tiny_cpu.yaml's leaves (read once per process; callers only read it)."""
    return _dotted(shipped_keys("tiny_cpu"))


def run_config(cfg: DictConfig, strategy: str, seed: int) -> dict[str, Any]:
    """The settings that decide the results of ``strategy`` run with training seed ``seed`` (module docstring)."""
    flat = _dotted(OmegaConf.to_container(cfg, resolve=True))
    unused = tuple(group for group, off in (("influence.", strategy not in INFLUENCE_STRATEGIES),
                                            ("curriculum.candidates.", cfg.curriculum.rescore != "candidates")) if off)
    keep = {k: v for k, v in flat.items()
            if not any(k == d or k.startswith(d + ".") for d in EXECUTION_ONLY) and not k.startswith(unused)}
    return keep | {"strategy": strategy, "seed": seed}


def run_dir_problem(run_dir: Path, want: dict[str, Any]) -> str | None:
    """Why ``run_dir`` cannot be reused or resumed with the settings ``want``: it holds results made with other
    settings (or with none recorded); None when it can."""
    if not ((run_dir / "result.json").is_file() or (run_dir / "ckpt").is_dir()):
        return None
    path = run_dir / FILE
    if not path.is_file():
        return f"{run_dir}: holds results but no {FILE} (written by an older version)"
    have = json.loads(path.read_text())
    keys = have.keys() | want.keys()
    if INPUTS not in have or INPUTS not in want:  # compared once both know them (module docstring)
        keys -= {INPUTS}
    shipped = _shipped_defaults()
    added = {k for k in keys if k not in have and k in shipped and want[k] == shipped[k]}  # (so k is in want)
    diff = sorted(k for k in keys - added if k not in have or k not in want or have[k] != want[k])
    if not diff:
        return None
    show = diff[:6]
    was = ", ".join(f"{k}={have.get(k, '<unset>')!r}" for k in show)
    now = ", ".join(f"{k}={want.get(k, '<unset>')!r}" for k in show)
    more = f" (and {len(diff) - len(show)} more)" if len(diff) > len(show) else ""
    return f"{run_dir}: its results were made with {was}{more}; this command has {now}"


def refuse_other_settings(problems: Iterable[str | None]) -> None:
    """One ``ValueError`` naming every directory of results made with other settings (``problems``: one per
    directory a command would reuse or resume, None where it can)."""
    found = [p for p in problems if p]
    if len(found) == 1:
        raise ValueError(f"{found[0]}. Choose another run_name, or delete it to redo it")
    if found:
        listed = "; ".join(f"({i}) {p}" for i, p in enumerate(found, 1))
        raise ValueError(f"{len(found)} directories hold results made with other settings: {listed}. Choose another "
                         "run_name, or delete them to redo them")


def write_run_config(run_dir: Path, want: dict[str, Any]) -> None:
    """Record ``want`` beside the run's results (atomically), before any of them is written."""
    atomic_write_json(want, run_dir / FILE)


def with_inputs(want: dict[str, Any], policy_dir: Path, rollouts: dict[str, str]) -> dict[str, Any]:
    """``want`` plus the content digests of the policy (``utils.identity.model_digest``) and of the rollouts files."""
    from cropi_verl.utils.identity import model_digest

    return want | {INPUTS: {"policy": model_digest(policy_dir), **{f"rollouts.{k}": v for k, v in rollouts.items()}}}
