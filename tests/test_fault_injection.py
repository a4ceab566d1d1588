"""Kill-anywhere resume (slow): the quick demo (CROPI only) is SIGKILLed at each named point, then rerun with
the same command; the final selection per stage, the model (bit for bit), the sampler position and the eval
history must equal an uninterrupted run's, and no artifact may be left half-written.

| kill point (CROPI_KILL_AT)  | where                                                          |
|-----------------------------|----------------------------------------------------------------|
| rollout_shard:2             | offline rollout collection, after the 2nd shard                |
| feature_shard:2             | the gradient pass, after the 2nd feature-store shard           |
| influence_worker:1          | the gradient pass, a Ray influence worker dies (driver fails)  |
| scores_written:1            | after stage 0's scores, before its state.json                  |
| selection_done:2            | stage 1 selected, before the next checkpoint                   |
| train_step:5                | mid-stage training (stage 1), after the step-4 checkpoint      |
"""

from __future__ import annotations

import pytest
from demo_helpers import assert_same_run, half_written, run_demo

pytestmark = pytest.mark.slow
ARGS = ("methods=[cropi]", "offline.shard_size=40")  # 150 pool prompts -> 4 rollout shards


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    proc = run_demo(out, *ARGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.parametrize("point", ["rollout_shard:2", "feature_shard:2", "influence_worker:1", "scores_written:1",
                                   "selection_done:2", "train_step:5"])
def test_kill_then_resume_is_identical(point, reference, tmp_path):
    out = tmp_path / "run"
    killed = run_demo(out, *ARGS, "influence.shard_size=16", kill_at=point)
    assert killed.returncode != 0, f"{point} was never reached"
    assert not half_written(out)
    resumed = run_demo(out, *ARGS, "influence.shard_size=16")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(reference, out)
