"""``SelectionConfig``: everything that decides a stage's selection besides the policy's weights, built once from a
run's config and passed whole to ``stage_boundary`` and ``influence_pass``.

- ``schedule``: stages, their length, the fraction selected and the strategy (``StageSchedule``);
- ``manifest``: what the feature stores are computed with (model, the workers' dtype, projector, POPI settings);
- ``seed``: stage s breaks the selection's ties (and draws random subsets) with ``seed + s``; every stage scores
  against the validation prompts drawn with ``seed``;
- ``candidates``: after stage 0, score only the previous stage's best and a random share of the rest
  (``CandidateConfig``, ``curriculum/candidates.py``); None: every pass scores the whole pool;
- ``metric``, ``max_val_prompts``: the scoring; ``shard_size``: prompts per feature-store shard (the resume
  granularity, no effect on results); ``progress``: progress bars.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from cropi_verl.curriculum.schedule import StageSchedule


@dataclass(frozen=True)
class CandidateConfig:
    multiple: float = 3.0  # the previous stage's top min(1, multiple x fraction) of the pool are re-scored ...
    explore: float = 0.1  # ... and this share of the other prompts, drawn with the stage's seed

    def __post_init__(self) -> None:
        if not self.multiple >= 1:
            raise ValueError(f"candidates.multiple must be >= 1 (the previous selection at least), got {self.multiple}")
        if not 0 <= self.explore <= 1:
            raise ValueError(f"candidates.explore must be in [0, 1], got {self.explore}")

    def top_fraction(self, fraction: float) -> float:
        """The share of the pool kept from the previous ranking: ``min(1, multiple * fraction)``."""
        return min(1.0, self.multiple * fraction)

    def scored_share(self, fraction: float, scorable: float) -> float:
        """The share of a full pass's gradients that a candidates pass computes, when a share ``scorable`` of the
        pool is not zero-advantage: ``(min(t, s) + explore max(0, s - t)) / s`` with ``t = top_fraction``,
        ``s = scorable`` (a full pass computes the ``s N`` scorable prompts' gradients)."""
        if scorable <= 0:
            return 1.0  # nothing to compute either way
        t = self.top_fraction(fraction)
        return (min(t, scorable) + self.explore * max(0.0, scorable - t)) / scorable


def candidates_from(rescore: bool | str, candidates: Mapping[str, float]) -> CandidateConfig | None:
    """The ``CandidateConfig`` of a config's ``rescore`` (``true | false | candidates``) and ``candidates`` group:
    None unless ``rescore`` is ``candidates``."""
    return CandidateConfig(**candidates) if rescore == "candidates" else None


@dataclass(frozen=True)
class SelectionConfig:
    schedule: StageSchedule
    manifest: dict = field(default_factory=dict)
    seed: int = 0
    metric: str = "cosine"
    max_val_prompts: int = 100
    shard_size: int = 256
    progress: bool = False
    candidates: CandidateConfig | None = None

    def stage_seed(self, stage: int) -> int:
        """The seed of stage ``stage``'s selection (tie-breaks, random draws): ``seed + stage``."""
        return self.seed + stage
