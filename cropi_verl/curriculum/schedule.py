"""The stage schedule: how many stages, how long each is, and how each stage's subset is chosen.

Stage s covers global steps ``[s * steps_per_stage, (s + 1) * steps_per_stage)``. At its start the selection is
redone with ``strategy`` (one of ``STRATEGIES`` below) on the pool, at the current policy:

- ``cropi`` / ``influence_max``: an influence pass at every stage when ``rescore`` (CROPI's curriculum; what the
  passes after stage 0 score, the pool or its candidates, is ``SelectionConfig.candidates``), else only at stage 0
  and the subset is kept;
- ``influence_oneshot``: the paper's one-shot "Influence" baseline, i.e. ``cropi`` with ``rescore=False``;
- ``random`` / ``pass_rate`` / ``learnability``: no gradients; re-drawn each stage with seed ``seed + stage``
  (pass-rate keys do not change, so only their ties can);
- ``full``: every prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

from cropi_verl.influence.selection import STRATEGIES as SELECT_STRATEGIES
from cropi_verl.influence.selection import check_fraction

INFLUENCE_STRATEGIES = ("cropi", "influence_max", "influence_oneshot")
PASS_RATE_STRATEGIES = ("pass_rate", "learnability")  # select on the pool rollouts' pass rates, no gradients
STRATEGIES = tuple(SELECT_STRATEGIES) + ("influence_oneshot",)


@dataclass(frozen=True)
class StageSchedule:
    num_stages: int = 3
    steps_per_stage: int = 20
    fraction: float = 0.1
    strategy: str = "cropi"
    rescore: bool = True

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"curriculum strategy {self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        if self.num_stages < 1 or self.steps_per_stage < 1:
            raise ValueError(f"num_stages and steps_per_stage must be >= 1, got {self.num_stages}, {self.steps_per_stage}")
        check_fraction(self.fraction)

    @property
    def total_steps(self) -> int:
        return self.num_stages * self.steps_per_stage

    @property
    def select_strategy(self) -> str:
        """The ``select()`` strategy behind this schedule's name."""
        return "cropi" if self.strategy == "influence_oneshot" else self.strategy

    @property
    def uses_influence(self) -> bool:
        return self.strategy in INFLUENCE_STRATEGIES

    def stage_of(self, step: int) -> int:
        """The stage that global step ``step`` (0-based) belongs to; the last stage absorbs any overrun."""
        return min(step // self.steps_per_stage, self.num_stages - 1)

    def is_boundary(self, step: int) -> bool:
        """True when step ``step`` (0-based) is the first of a stage."""
        return step % self.steps_per_stage == 0 and step // self.steps_per_stage < self.num_stages

    def needs_pass(self, stage: int) -> bool:
        """Whether stage ``stage`` starts with an influence pass at the current policy."""
        rescore = self.rescore and self.strategy != "influence_oneshot"
        return self.uses_influence and (stage == 0 or rescore)
