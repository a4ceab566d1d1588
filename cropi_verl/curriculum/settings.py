"""``SelectionConfig``: everything that decides a stage's selection besides the policy's weights, built once from a
run's config and passed whole to ``stage_boundary`` and ``influence_pass``.

- ``schedule``: stages, their length, the fraction selected and the strategy (``StageSchedule``);
- ``manifest``: what the feature stores are computed with (model, the workers' dtype, projector, POPI settings);
- ``seed``: stage s breaks the selection's ties (and draws random subsets) with ``seed + s``; every stage scores
  against the validation prompts drawn with ``seed``;
- ``metric``, ``max_val_prompts``: the scoring; ``shard_size``: prompts per feature-store shard (the resume
  granularity, no effect on results); ``progress``: progress bars.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cropi_verl.curriculum.schedule import StageSchedule


@dataclass(frozen=True)
class SelectionConfig:
    schedule: StageSchedule
    manifest: dict = field(default_factory=dict)
    seed: int = 0
    metric: str = "cosine"
    max_val_prompts: int = 100
    shard_size: int = 256
    progress: bool = False

    def stage_seed(self, stage: int) -> int:
        """The seed of stage ``stage``'s selection (tie-breaks, random draws): ``seed + stage``."""
        return self.seed + stage
