"""Scores and selection strategies against hand-computed rankings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cropi_verl.influence.scoring import influence_scores
from cropi_verl.influence.selection import SelectionPool, n_to_select, select

IDS = np.array([10, 11, 12, 13, 14, 15, 16, 17, 18, 19])


def test_cosine_and_inner_product_hand_computed():
    train = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, -2.0]])
    val = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.0, 2.0])}
    cos = influence_scores(train, val)
    assert cos["a"].tolist() == pytest.approx([0.6, 1.0, 0.0])
    assert cos["b"].tolist() == pytest.approx([0.8, 0.0, -1.0])
    ip = influence_scores(train, val, "inner_product")
    assert ip["b"].tolist() == pytest.approx([8.0, 0.0, -4.0])
    with pytest.raises(ValueError, match="validation gradient 'z' is zero"):
        influence_scores(train, {"z": torch.zeros(2)})


def test_cropi_reciprocal_rank_merge_hand_computed():
    # set a ranks: 10>11>12>13 ; set b ranks: 13>12>10>11 ; 14 unscored
    a = np.array([0.9, 0.8, 0.7, 0.1, np.nan])
    b = np.array([0.3, 0.2, 0.5, 0.9, np.nan])
    pool = SelectionPool(IDS[:5], {"a": a, "b": b})
    # RR: 10: 1/1+1/3=1.333 ; 11: 1/2+1/4=0.75 ; 12: 1/3+1/2=0.833 ; 13: 1/4+1/1=1.25
    res = select("cropi", pool, fraction=0.6, seed=0)  # round(0.6 * 5) = 3
    assert res.prompt_ids.tolist() == [10, 13, 12]
    assert res.keys.tolist() == pytest.approx([4 / 3, 1.25, 5 / 6])
    # max over sets: 10 -> 0.9, 13 -> 0.9 (a tie, ordered by seed), 12 -> 0.7, 11 -> 0.8
    res = select("influence_max", pool, fraction=0.6, seed=0)
    assert set(res.prompt_ids[:2].tolist()) == {10, 13} and res.prompt_ids[2] == 11


def test_shortfall_when_too_few_scored():
    s = np.array([0.5, np.nan, np.nan, np.nan])
    res = select("cropi", SelectionPool(IDS[:4], {"a": s}), fraction=0.5, seed=0)
    assert res.prompt_ids.tolist() == [10] and res.shortfall == 1


def test_pass_rate_and_learnability_hand_computed():
    p = np.array([0.0, 0.5, 1.0, 0.25, 0.875, 0.5, 0.625, 0.125, 1.0, 0.0])
    pool = SelectionPool(IDS, pass_rate=p)
    # 0 < p < 1: ids 11, 13, 14, 15, 16, 17 qualify; 4 of them, in the seed's random order
    res = select("pass_rate", pool, fraction=0.4, seed=0)
    assert len(res.prompt_ids) == 4 and set(res.prompt_ids.tolist()) <= {11, 13, 14, 15, 16, 17}
    tb = np.random.default_rng(0).permutation(10)  # the documented tie-break: ascending permutation rank
    assert res.prompt_ids.tolist() == [IDS[i] for i in sorted([1, 3, 4, 5, 6, 7], key=lambda i: tb[i])][:4]
    short = select("pass_rate", pool, fraction=0.8, seed=0)
    assert short.shortfall == 2 and sorted(short.prompt_ids.tolist()) == [11, 13, 14, 15, 16, 17]
    res = select("learnability", pool, fraction=0.3, seed=0)  # p(1-p): .25 .25 .234375 ...
    assert set(res.prompt_ids[:2].tolist()) == {11, 15} and res.prompt_ids[2] == 16


def test_ties_broken_by_seed_deterministically():
    pool = SelectionPool(IDS, pass_rate=np.full(10, 0.5))
    a = select("learnability", pool, 0.3, seed=7).prompt_ids
    assert np.array_equal(a, select("learnability", pool, 0.3, seed=7).prompt_ids)
    others = {tuple(select("learnability", pool, 0.3, seed=s).prompt_ids) for s in range(8)}
    assert len(others) > 1


def test_random_and_full():
    pool = SelectionPool(IDS)
    r = select("random", pool, 0.3, seed=3).prompt_ids
    assert len(set(r.tolist())) == 3 and set(r.tolist()) <= set(IDS.tolist())
    assert np.array_equal(r, select("random", pool, 0.3, seed=3).prompt_ids)
    assert sorted(select("full", pool, 0.1, seed=0).prompt_ids.tolist()) == IDS.tolist()


def test_bad_fractions_and_missing_inputs():
    with pytest.raises(ValueError, match=r"select fraction must be in \(0, 1\], got 1.5"):
        n_to_select(1.5, 10)
    with pytest.raises(ValueError, match="rounds to 0 prompts"):
        n_to_select(0.01, 10)
    with pytest.raises(ValueError, match="needs offline pass rates"):
        select("pass_rate", SelectionPool(IDS), 0.5, 0)
    with pytest.raises(ValueError, match="needs influence scores"):
        select("cropi", SelectionPool(IDS), 0.5, 0)
    with pytest.raises(ValueError, match="unknown selection strategy 'best'"):
        select("best", SelectionPool(IDS), 0.5, 0)
    assert math.isclose(n_to_select(0.1, 600), 60)
