"""What a stage boundary reports to the trainer's logger (verl ``Tracking``: console, wandb, tensorboard, ...).

For stage s with subset S_s (from its ``StageState``):

- ``timing_s/cropi_boundary``: the boundary's seconds; ``timing_s/cropi_{val_gradients,pool_gradients,scoring}``
  its influence pass's parts (absent without a pass);
- ``cropi/selection_seconds_total``: the sum of ``timing_s/cropi_boundary`` over stages 0..s (read from the stage
  states on disk, so it survives a resume);
- ``cropi/stage``, ``cropi/n_pool``, ``cropi/n_gradients`` (the pool prompts whose gradient the pass computed: the
  scorable pool, or its candidates with ``rescore=candidates``), ``cropi/n_selected`` = |S_s|,
  ``cropi/n_zero_advantage``, ``cropi/n_nonfinite``, ``cropi/n_excluded_responses`` (empty or non-finite reward),
  ``cropi/shortfall``;
- ``cropi/overlap_prev`` = |S_s ∩ S_{s-1}| / |S_s| (absent at stage 0);
- the drift meter of the boundary's pass (``influence_pass.drift_summary``): ``cropi/ess_seq_mean``,
  ``cropi/ess_popi_mean``, ``cropi/ess_low_share``, ``cropi/rho_max`` (absent without a pass).
"""

from __future__ import annotations

from pathlib import Path

from cropi_verl.curriculum.state import StageState

PASS_PARTS = {"val_features": "val_gradients", "pool_features": "pool_gradients", "scoring": "scoring"}
COUNTS = ("n_pool", "n_gradients", "n_zero_advantage", "n_nonfinite", "n_excluded_responses", "shortfall")


def boundary_metrics(state: StageState, previous: StageState | None, curriculum_dir: str | Path) -> dict[str, float]:
    """The metrics of ``state``'s boundary (see the module docstring)."""
    stats = state.stats
    out: dict[str, float] = {"cropi/stage": state.stage, "cropi/n_selected": len(state.selected_ids),
                             "timing_s/cropi_boundary": float(stats.get("seconds", 0.0))}
    out |= {f"cropi/{k}": stats[k] for k in COUNTS if k in stats}
    out |= {f"timing_s/cropi_{name}": stats["pass_seconds"][k] for k, name in PASS_PARTS.items()
            if k in stats.get("pass_seconds", {})}
    out |= {f"cropi/{k}": v for k, v in stats.get("drift", {}).items()}
    if previous is not None and state.selected_ids:
        out["cropi/overlap_prev"] = len(set(state.selected_ids) & set(previous.selected_ids)) / len(state.selected_ids)
    done = [StageState.load(p) for p in sorted(Path(curriculum_dir).glob("stage_*/state.json"))]
    out["cropi/selection_seconds_total"] = sum(float(s.stats.get("seconds", 0.0)) for s in done if s.stage <= state.stage)
    return out
