"""The bad-input sweep: every malformed input gets one clear error naming what is wrong, or a documented,
counted fallback; never a stack trace from deep inside torch and never a silent wrong selection.

Covered elsewhere (same contract): missing columns, wrong types, empty prompts, missing ground truth
(tests/test_verl_format.py); prompts longer than the limit (tests/test_rollouts.py); a bad CROPI config
(tests/test_verl_trainer.py, tests/test_preflight.py)."""

from __future__ import annotations

import math
from dataclasses import replace

import pandas as pd
import pytest

from cropi_verl.curriculum.boundary import check_rollout_ids, stage_boundary
from cropi_verl.curriculum.schedule import StageSchedule
from cropi_verl.influence.gradients import parameter_offsets
from cropi_verl.influence.pipeline import local_featurizer
from cropi_verl.influence.projection import make_projector
from cropi_verl.influence.selection import SelectionPool, select
from cropi_verl.influence.store import FeatureStore, FeatureStoreMismatch
from cropi_verl.rollout.records import Response, make_row, to_prompt_rollouts
from influence_helpers import PAD, make_prompts, rollout_table, tiny_model


def _boundary(tmp_path, train, val, fraction=0.2):
    model = tiny_model()
    _, dim = parameter_offsets(model)
    featurize = local_featurizer(model, make_projector("sparse_jl", dim, k=32), PAD)
    sched = StageSchedule(num_stages=1, steps_per_stage=1, fraction=fraction, strategy="cropi")
    return stage_boundary(0, 0, sched, train, val, tmp_path, lambda: featurize, {"m": 0})


def _solved(n, value):
    return rollout_table([replace(p, rewards=[value] * len(p.rewards)) for p in make_prompts(n)])


def _nan_in_gradient():
    prompts = make_prompts(6)
    prompts[2].behaviour_logprobs[0][0] = -math.inf  # ratio exp(logp - (-inf)) = inf
    return rollout_table(prompts)


GOOD_VAL = {"v": rollout_table(make_prompts(4, seed=9))}

ERRORS = [
    ("pool where beta solved everything", lambda t: _boundary(t, _solved(10, 1.0), GOOD_VAL),
     "no prompt of the pool of 10 can be scored \\(10 zero-advantage"),
    ("pool where beta solved nothing", lambda t: _boundary(t, _solved(10, 0.0), GOOD_VAL),
     "no prompt of the pool of 10 can be scored"),
    ("validation set with no usable prompt", lambda t: _boundary(t, rollout_table(make_prompts(10)), {"v": _solved(3, 1.0)}),
     "validation set 'v': .*3 prompts, 0 with a non-zero advantage"),
    ("select fraction that rounds to 0 prompts", lambda t: select("random", SelectionPool(list(range(10))), 0.01, 0),
     "select fraction 0.01 of a pool of 10 prompts rounds to 0 prompts"),
    ("rollouts of another dataset", lambda t: check_rollout_ids(rollout_table(make_prompts(3)), [1, 2, 3], "train rollouts"),
     "train rollouts: 3 prompt ids are not rows of the training prompts .*another dataset"),
    ("feature store of another projector", lambda t: (FeatureStore(t, {"projector": {"seed": 0}}),
                                                      FeatureStore(t, {"projector": {"seed": 1}})),
     "projector: store has"),
]


@pytest.mark.parametrize("name,trigger,message", ERRORS, ids=[e[0] for e in ERRORS])
def test_clear_error(name, trigger, message, tmp_path):
    with pytest.raises((ValueError, FeatureStoreMismatch), match=message) as err:
        trigger(tmp_path)
    assert "\n" not in str(err.value)


def test_nan_or_inf_in_a_gradient_is_skipped_counted_and_never_selected(tmp_path):
    state = _boundary(tmp_path, _nan_in_gradient(), GOOD_VAL, fraction=0.5)
    assert state.stats["n_nonfinite"] == 1 and 102 not in state.selected_ids
    scores = pd.read_parquet(state.score_file)
    assert scores.loc[scores.prompt_id == 102, "skipped"].item() == "nonfinite"


@pytest.mark.parametrize("tokens,reward,flag", [([7], math.nan, "nan_reward"), ([7], math.inf, "nan_reward"),
                                                ([], 1.0, "empty")])
def test_bad_responses_are_flagged_and_never_scored(tokens, reward, flag):
    good = Response([5, 6], "ok", [-1.0, -1.0], False)
    row = make_row(0, "cropi_toy/add", "train", "1", [1, 2], [good, Response(tokens, "", [-1.0] * len(tokens), False)],
                   [1.0, reward], eos_id=None)
    assert row["flag"] == ["", flag] and row["n_valid"] == 1 and row["pass_rate"] == 1.0
    (pr,) = to_prompt_rollouts(pd.DataFrame([row]))
    assert pr.responses == [[5, 6]] and pr.rewards == [1.0]
