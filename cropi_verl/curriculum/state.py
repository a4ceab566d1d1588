"""The stage state: what a resumed run needs to train on the same subset (saved atomically as JSON).

It lives at ``<curriculum_dir>/stage_<s>/state.json`` (written once the stage's selection is final) and is also
embedded in every trainer checkpoint, so a resume lands in the same stage with the same subset.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cropi_verl.utils.atomic import atomic_write_json


def stage_dir(curriculum_dir: str | Path, stage: int) -> Path:
    """Where stage ``stage``'s state, scores and features live: ``<curriculum_dir>/stage_<sss>``."""
    return Path(curriculum_dir) / f"stage_{stage:03d}"


@dataclass
class StageState:
    stage: int  # 0-based stage index
    start_step: int  # global step at which the stage starts (the policy its scores were computed at)
    strategy: str
    selected_ids: list[int]  # prompt ids, best first
    selection_seed: int  # tie-breaks / random draws of this stage's selection
    sampler_seed: int  # the ranked sampler's shuffle seed
    score_file: str | None = None  # scores.parquet of this stage (None: no influence pass at this stage)
    stats: dict = field(default_factory=dict)  # n_pool, n_zero_advantage, n_nonfinite, n_excluded_responses,
    #                                             shortfall, seconds
    settings: dict = field(default_factory=dict)  # what decided the selection (``selection_settings``); a rerun
    #                                               with other settings may not reuse it

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "StageState":
        return cls(**d)

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(self.to_dict(), Path(path))

    def scores_path(self, curriculum_dir: str | Path) -> Path | None:
        """The scores file this stage selected from, under ``curriculum_dir`` (found by its stage folder, so a moved
        output directory, or a run from another working directory, still finds it); None without one."""
        if self.score_file is None:
            return None
        recorded = Path(self.score_file)
        return Path(curriculum_dir) / recorded.parent.name / recorded.name

    @classmethod
    def load(cls, path: str | Path) -> "StageState":
        p = Path(path)
        try:
            return cls.from_dict(json.loads(p.read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise ValueError(f"{p}: not a readable stage state ({e})") from None
