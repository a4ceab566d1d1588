"""Plots (matplotlib, Agg): accuracy curves per method, and what each stage selected.

- ``plot_curves``: targeted and untargeted validation accuracy vs step, one line per method, and targeted accuracy
  vs wall-clock seconds and vs FLOPs (training, stage boundaries and the offline collection a method selects from);
  the step (second, FLOP) at which full-data GRPO reaches its best and the one at which CROPI reaches it are marked.
- ``plot_selection``: per stage of one run, the offline pass-rate histogram of the selected prompts, the influence
  score distribution (pool vs selected), the overlap |S_s ∩ S_{s-1}| / |S_s| with the previous stage, and the
  skill-family mix.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cropi_verl.curriculum.state import StageState  # noqa: E402


# the cost panels: summary key of the cumulative cost, its speed-up entry, the unit, the panel's title and axis
COST_PANELS = (("elapsed_seconds", "wallclock_speedup", "seconds", "targeted accuracy against wall-clock",
                "seconds (training + stage boundaries + offline collection)"),
               ("spent_flops", "compute_speedup", "flops", "targeted accuracy against compute",
                "FLOPs (sampling, updates, influence passes, offline collection)"))


def plot_curves(methods: Mapping[str, dict], summary: Mapping, path: str | Path) -> Path:
    """``methods[name]["history"]`` = [{"step", "targeted", "untargeted"}, ...]; ``summary``: summary.json's
    ``speedup`` and the ``COST_PANELS`` keys (each optional; a cost panel is drawn when its cost is there)."""
    panels = [p for p in COST_PANELS if summary.get(p[0])]
    fig, axes = plt.subplots(1, 2 + len(panels), figsize=(5.5 * (2 + len(panels)), 4))
    steps = {name: [r["step"] for r in res["history"]] for name, res in methods.items()}
    for ax, key in zip(axes, ("targeted", "untargeted")):
        _lines(ax, methods, steps, key)
        ax.set_title(f"{key} validation accuracy (avg@k)")
        ax.set_xlabel("GRPO step")
    if sp := summary.get("speedup", {}).get("cropi"):
        _mark_reach(axes[0], sp, sp["baseline_best_step"], sp["steps_to_reach"])
    for ax, (cost, speedup, unit, title, xlabel) in zip(axes[2:], panels):
        _lines(ax, methods, summary[cost], "targeted")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        if entry := summary.get(speedup, {}).get("cropi"):
            _mark_reach(ax, entry, entry[f"baseline_{unit}"], entry[f"{unit}_to_reach"])
        ax.legend(fontsize=8)
    axes[0].legend(fontsize=8)
    return _save(fig, path)


def _lines(ax, methods: Mapping[str, dict], x: Mapping[str, list], key: str) -> None:
    """One line per method: ``key`` accuracy against ``x[name]``."""
    for name, res in methods.items():
        ax.plot(x[name], [r[key] for r in res["history"]], marker="o", ms=3, label=name,
                lw=2.2 if name == "cropi" else 1.2)
    ax.grid(alpha=0.3)


def _mark_reach(ax, entry: dict, base_x: float, reach_x: float | None) -> None:
    """Full data's best (``entry["baseline_best"]`` at ``base_x``) and CROPI's first reach of it at ``reach_x``."""
    ax.axhline(entry["baseline_best"], color="grey", ls=":", lw=1)
    ax.axvline(base_x, color="grey", ls="--", lw=1, label="full: best")
    if reach_x is not None:
        ratio = "undefined, 0/0" if entry["speedup"] is None else f"{entry['speedup']:.2f}x"
        ax.axvline(reach_x, color="C0", ls="--", lw=1, label=f"cropi reaches it ({ratio})")


def plot_selection(stages: list[dict], pool: pd.DataFrame, scores: Mapping[int, pd.DataFrame], path: str | Path) -> Path:
    """``stages``: StageState dicts; ``pool``: prompt_id, pass_rate, family; ``scores[stage]``: scores.parquet."""
    fam = dict(zip(pool["prompt_id"], pool["family"]))
    rate = dict(zip(pool["prompt_id"], pool["pass_rate"]))
    families = sorted(set(pool["family"]))
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    prev: set[int] | None = None
    overlaps = []
    for st in stages:
        sel = st["selected_ids"]
        label = f"stage {st['stage']}"
        axes[0].hist([rate[i] for i in sel], bins=np.linspace(0, 1, 11), histtype="step", lw=1.5, label=label)
        if st["stage"] in scores:
            cols = [c for c in scores[st["stage"]].columns if c.startswith("score_")]
            for c in cols:
                s = scores[st["stage"]][c].dropna()
                axes[1].hist(s, bins=30, histtype="step", label=f"{label} {c[6:]}")
        overlaps.append(np.nan if prev is None else len(prev & set(sel)) / len(sel))
        prev = set(sel)
        mix = Counter(fam[i] for i in sel)
        axes[3].bar(np.arange(len(families)) + 0.8 * st["stage"] / len(stages), [mix[f] / len(sel) for f in families],
                    width=0.8 / len(stages), label=label)
    axes[0].set_title("offline pass rate of the selected")
    axes[1].set_title("influence scores (scored pool)")
    axes[2].bar([st["stage"] for st in stages], np.nan_to_num(overlaps), color="C2")
    axes[2].set_title("overlap with the previous stage")
    axes[2].set_ylim(0, 1)
    axes[3].set_xticks(np.arange(len(families)) + 0.4 - 0.4 / len(stages), families)
    axes[3].axhline(1 / len(families), color="grey", ls=":", lw=1)
    axes[3].set_title("skill-family mix of the selected")
    for ax in (axes[0], axes[1], axes[3]):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _save(fig, path)


def plot_run(out_dir: str | Path, results: Mapping[str, dict], summary: Mapping, pool: pd.DataFrame) -> list[Path]:
    """``curves.png`` and ``selection_<method>.png`` (every method but ``full``) of one demo run."""
    out = Path(out_dir)
    paths = [plot_curves(results, summary, out / "curves.png")]
    for name, res in results.items():
        if name != "full":
            states = [StageState.from_dict(s) for s in res["stages"]]
            scores = {s.stage: pd.read_parquet(s.scores_path(out / name / "curriculum"))
                      for s in states if s.score_file}
            paths.append(plot_selection(res["stages"], pool, scores, out / f"selection_{name}.png"))
    return paths


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
