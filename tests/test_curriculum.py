"""Curriculum pieces: schedule, stage state, the ranked sampler (with torchdata's StatefulDataLoader) and the
stage-boundary routine's reuse / one-shot / re-draw rules."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from cropi_verl.curriculum.boundary import stage_boundary, stage_dir
from cropi_verl.curriculum.sampler import RankedSubsetSampler
from cropi_verl.curriculum.schedule import StageSchedule
from cropi_verl.curriculum.settings import CandidateConfig, SelectionConfig
from cropi_verl.curriculum.state import StageState
from cropi_verl.influence.gradients import parameter_offsets
from cropi_verl.influence.pipeline import local_featurizer
from cropi_verl.influence.projection import make_projector
from influence_helpers import PAD, make_prompts, rollout_table, tiny_model

POSITIONS = [3, 17, 5, 11, 29, 8, 2]


def test_sampler_epochs_are_seeded_permutations_of_the_subset():
    s = RankedSubsetSampler(POSITIONS, seed=4)
    e0, e1 = list(s), list(s)
    assert sorted(e0) == sorted(POSITIONS) == sorted(e1) and e0 != e1
    g = torch.Generator().manual_seed(4)  # epoch 0 uses seed + 0
    assert e0 == [POSITIONS[i] for i in torch.randperm(len(POSITIONS), generator=g).tolist()]
    assert list(RankedSubsetSampler(POSITIONS, seed=4)) == e0


def test_sampler_state_round_trip_mid_epoch():
    ref = RankedSubsetSampler(POSITIONS, seed=1)
    uninterrupted = list(ref) + list(ref)
    s = RankedSubsetSampler(POSITIONS, seed=1)
    first = list(s)  # one full epoch
    it = iter(s)
    first += [next(it) for _ in range(3)]
    state = s.state_dict()
    assert state == {"epoch": 1, "yielded": 3, "seed": 1, "n": 7}
    resumed = RankedSubsetSampler(POSITIONS, seed=1)
    resumed.load_state_dict(state)
    assert first + list(resumed) == uninterrupted


def test_sampler_refuses_a_state_from_another_subset():
    s = RankedSubsetSampler(POSITIONS, seed=1)
    with pytest.raises(ValueError, match="wrong stage subset"):
        s.load_state_dict(RankedSubsetSampler(POSITIONS[:5], seed=1).state_dict())
    with pytest.raises(ValueError, match="at least one"):
        RankedSubsetSampler([], seed=0)


def _loader(seed=2):
    return StatefulDataLoader(list(range(40)), batch_size=2, sampler=RankedSubsetSampler(POSITIONS, seed), drop_last=True)


def test_stateful_dataloader_round_trip_through_torch_save():
    """The loader state (as verl's data.pt stores it) restores the sampler's position exactly."""
    loader = _loader()
    it = iter(loader)
    consumed = [next(it).tolist() for _ in range(2)]
    buf = io.BytesIO()
    torch.save(loader.state_dict(), buf)
    restored = _loader()
    restored.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=False))
    rest = [b.tolist() for b in restored]
    full = [b.tolist() for b in _loader()]
    assert consumed + rest == full and len(full) == 3  # 7 rows, batch 2, drop_last
    nxt = [b.tolist() for b in restored]  # the next epoch: reshuffled (seed + 1)
    assert len(nxt) == 3 and nxt != full


def test_stage_state_round_trip_and_clear_error(tmp_path):
    st = StageState(2, 40, "cropi", [5, 1, 9], 2, 2002, "x/scores.parquet", {"n_pool": 10})
    assert StageState.load(st.save(tmp_path / "s.json")) == st
    (tmp_path / "bad.json").write_text("{\"stage\": 1")
    with pytest.raises(ValueError, match="bad.json: not a readable stage state"):
        StageState.load(tmp_path / "bad.json")


def test_schedule_rules():
    s = StageSchedule(num_stages=3, steps_per_stage=5, strategy="cropi")
    assert [s.stage_of(t) for t in (0, 4, 5, 14, 20)] == [0, 0, 1, 2, 2]
    assert [t for t in range(20) if s.is_boundary(t)] == [0, 5, 10]
    assert all(s.needs_pass(i) for i in range(3))
    one = StageSchedule(num_stages=3, steps_per_stage=5, strategy="influence_oneshot")
    assert [one.needs_pass(i) for i in range(3)] == [True, False, False] and one.select_strategy == "cropi"
    assert not StageSchedule(strategy="random").needs_pass(0)
    assert [StageSchedule(strategy="cropi", rescore=False).needs_pass(i) for i in range(2)] == [True, False]
    with pytest.raises(ValueError, match="not one of"):
        StageSchedule(strategy="best")
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        StageSchedule(fraction=1.5)


@pytest.fixture
def pool():
    model = tiny_model()
    _, dim = parameter_offsets(model)
    proj = make_projector("sparse_jl", dim, k=64)
    train = rollout_table(make_prompts(30, zero_every=5))
    val = {"v": rollout_table(make_prompts(6, seed=7))}
    calls = []

    def featurizer():
        calls.append(1)
        return local_featurizer(model, proj, PAD)

    return train, val, featurizer, calls


def test_boundary_reuses_a_final_selection_and_keeps_one_shot_subsets(tmp_path, pool):
    train, val, featurizer, calls = pool
    sched = StageSchedule(num_stages=2, steps_per_stage=4, fraction=0.2, strategy="influence_oneshot")
    s0 = stage_boundary(0, 0, SelectionConfig(sched, {"m": 1}), train, val, tmp_path, featurizer)
    assert len(calls) == 1 and len(s0.selected_ids) == 6 and s0.stats["n_zero_advantage"] == 6
    assert (stage_dir(tmp_path, 0) / "scores.parquet").is_file()
    again = stage_boundary(0, 0, SelectionConfig(sched, {"m": 1}), train, val, tmp_path, featurizer)
    assert again == s0 and len(calls) == 1  # a final selection is never recomputed
    s1 = stage_boundary(1, 4, SelectionConfig(sched, {"m": 1}), train, val, tmp_path, featurizer, previous=s0)
    assert s1.selected_ids == s0.selected_ids and len(calls) == 1
    with pytest.raises(ValueError, match="expected stage 1 at step 8"):
        stage_boundary(1, 8, SelectionConfig(sched, {"m": 1}), train, val, tmp_path, featurizer, previous=s0)
    other = StageSchedule(num_stages=2, steps_per_stage=4, fraction=0.3, strategy="influence_oneshot")
    with pytest.raises(ValueError, match=r"other settings \(fraction=0.2, now 0.3, m=1, now 2, seed=0, now 7\)"):
        stage_boundary(0, 0, SelectionConfig(other, {"m": 2}, seed=7), train, val, tmp_path, featurizer)  # never a stale selection
    assert len(calls) == 1


def test_boundary_redraws_random_per_stage_without_gradients(tmp_path, pool):
    train, val, featurizer, calls = pool
    sched = StageSchedule(num_stages=2, steps_per_stage=4, fraction=0.2, strategy="random")
    a = stage_boundary(0, 0, SelectionConfig(sched, seed=3), train, val, tmp_path, featurizer)
    b = stage_boundary(1, 4, SelectionConfig(sched, seed=3), train, val, tmp_path, featurizer, previous=a)
    assert not calls and len(a.selected_ids) == len(b.selected_ids) == 6
    assert a.selected_ids != b.selected_ids and set(a.selected_ids) <= set(train["prompt_id"])
    assert (a.selection_seed, b.selection_seed) == (3, 4)
    full = stage_boundary(0, 0, SelectionConfig(StageSchedule(fraction=1.0, strategy="full")), train, val, tmp_path / "f",
                          featurizer)
    assert sorted(full.selected_ids) == sorted(train["prompt_id"])


def test_every_stage_scores_against_the_same_non_zero_advantage_validation_prompts(tmp_path, pool):
    train, _, featurizer, _ = pool
    val_prompts = make_prompts(12, seed=7, zero_every=3)  # ids 100, 103, 106, 109 have a zero advantage
    seen = []

    def recording():
        inner = featurizer()
        return lambda prompts: seen.append([p.prompt_id for p in prompts]) or inner(prompts)

    sched = StageSchedule(num_stages=3, steps_per_stage=4, fraction=0.2, strategy="cropi")
    state = None
    for stage in range(3):
        state = stage_boundary(stage, 4 * stage, SelectionConfig(sched, {"m": 1}, seed=5, max_val_prompts=5), train,
                               {"v": rollout_table(val_prompts)}, tmp_path, recording, previous=state)
    val_calls = [ids for ids in seen if min(ids) >= 100 and max(ids) < 112 and len(ids) <= 5]
    assert len(val_calls) == 3 and val_calls[0] == val_calls[1] == val_calls[2]  # drawn once, kept every stage
    assert len(val_calls[0]) == 5 and not {100, 103, 106, 109} & set(val_calls[0])  # after the zero-advantage filter


def test_candidates_are_the_previous_top_and_a_seeded_share_of_the_other_scorable_prompts():
    from cropi_verl.curriculum.candidates import candidate_ids

    ranking, scorable = np.array([5, 2, 8]), np.array([1, 2, 3, 5, 8, 9])  # a pool of 10: 4 zero-advantage
    def pick(explore, seed=0):
        return candidate_ids(ranking, scorable, 10, CandidateConfig(multiple=2, explore=explore), 0.1, seed).tolist()

    assert pick(0.0) == [2, 5]  # round(2 x 0.1 x 10) = 2 of the previous ranking
    assert pick(1.0) == [1, 2, 3, 5, 8, 9]
    draws = {tuple(pick(0.5, seed)) for seed in range(20)}
    assert all(len(d) == 4 and {2, 5} < set(d) <= set(scorable) for d in draws) and len(draws) > 1
    assert pick(0.5, 3) == pick(0.5, 3)
    assert candidate_ids(ranking, scorable, 10, CandidateConfig(multiple=20, explore=0.0), 0.1, 0).tolist() == [2, 5, 8]


def test_rescoring_candidates_scores_the_previous_best_and_an_explored_share(tmp_path, pool):
    """``rescore=candidates`` (multiple 2, explore 0.5, fraction 0.2, a pool of 30 of which 6, ids 100 + 5i, are
    zero-advantage): stage 1 computes the gradients of stage 0's 12 best by score (sorted here from its scores file)
    and 6 of the 12 other scorable prompts (the zero-advantage ones are counted and skipped, as in a full pass); the
    candidates' scores equal a full re-score's at the same weights, the others are NaN, and the selection is the
    full re-score's top 6 among the candidates."""
    train, val, featurizer, calls = pool
    sched = StageSchedule(num_stages=2, steps_per_stage=4, fraction=0.2, strategy="cropi")
    cand = SelectionConfig(sched, {"m": 1}, candidates=CandidateConfig(multiple=2, explore=0.5))
    c0 = stage_boundary(0, 0, cand, train, val, tmp_path / "c", featurizer)
    c1 = stage_boundary(1, 4, cand, train, val, tmp_path / "c", featurizer, previous=c0)
    full = SelectionConfig(sched, {"m": 1})
    f1 = stage_boundary(1, 4, full, train, val, tmp_path / "f", featurizer,
                        previous=stage_boundary(0, 0, full, train, val, tmp_path / "f", featurizer))
    assert c0.stats["n_gradients"] == 24 and c1.stats["n_gradients"] == 18 and f1.stats["n_gradients"] == 24
    assert c1.stats["n_zero_advantage"] == f1.stats["n_zero_advantage"] == 6
    s0 = pd.read_parquet(c0.score_file)
    best12 = set(s0.dropna(subset=["score_v"]).sort_values("score_v", ascending=False)["prompt_id"][:12])
    t1, ref = pd.read_parquet(c1.score_file), pd.read_parquet(f1.score_file)
    scored = set(t1.loc[t1["skipped"] == "", "prompt_id"])
    assert best12 <= scored and len(scored) == 18 and (t1["skipped"] == "not_candidate").sum() == 6
    assert set(t1.loc[t1["skipped"] == "zero_advantage", "prompt_id"]) == set(range(100, 130, 5))
    on = t1["prompt_id"].isin(scored).to_numpy()
    np.testing.assert_allclose(t1["score_v"][on], ref["score_v"][on], rtol=1e-5, atol=1e-6)
    assert t1["score_v"][~on].isna().all()
    best = ref[on].dropna(subset=["score_v"]).sort_values("score_v", ascending=False)["prompt_id"][:6]
    assert c1.selected_ids == best.tolist()
    assert c1.settings["rescore"] == "candidates" and c1.settings["candidates"] == {"multiple": 2, "explore": 0.5}
    with pytest.raises(ValueError, match=r"other settings \(rescore='candidates', now True\)"):
        stage_boundary(1, 4, full, train, val, tmp_path / "c", featurizer, previous=c0)
    with pytest.raises(ValueError, match="needs the previous stage's scores"):
        stage_boundary(1, 4, cand, train, val, tmp_path / "x", featurizer, previous=None)
    (stage_dir(tmp_path / "c", 1) / "state.json").unlink()  # killed before its state: the features are resumed ...
    assert stage_boundary(1, 4, cand, train, val, tmp_path / "c", featurizer).selected_ids == c1.selected_ids
    (stage_dir(tmp_path / "c", 1) / "state.json").unlink()  # (the previous state read from disk) ... never mixed
    other = SelectionConfig(sched, {"m": 1}, candidates=CandidateConfig(multiple=2, explore=0.25))
    with pytest.raises(ValueError, match="given: store has"):  # with features of other candidates
        stage_boundary(1, 4, other, train, val, tmp_path / "c", featurizer, previous=c0)
    with pytest.raises(ValueError, match="candidates.multiple must be >= 1"):
        CandidateConfig(multiple=0.5)


def test_a_stage_finds_its_scores_under_the_run_it_is_read_from(tmp_path):
    """A stage state records its scores file as written (relative to the run's working directory, for the demo); read
    from a moved output directory or from another working directory it is found by its stage folder."""
    recorded = "outputs/old/cropi/curriculum/stage_000/scores.parquet"
    state = StageState(3, 30, "influence_oneshot", [1], 3, 3003, recorded)
    assert state.scores_path(tmp_path / "curriculum") == tmp_path / "curriculum" / "stage_000" / "scores.parquet"
    assert StageState(0, 0, "random", [1], 0, 0).scores_path(tmp_path) is None


def test_stage_dataloader_refuses_a_subset_smaller_than_one_batch():
    from cropi_verl.curriculum.sampler import stage_dataloader

    ids = {100 + i: i for i in range(10)}
    loader = stage_dataloader(list(range(10)), 0, [100, 103, 105, 107], 3, ids, 2, lambda b: b)
    assert sorted(sum((list(b) for b in loader), [])) == [0, 3, 5, 7]  # the selected rows, in batches of 2
    with pytest.raises(ValueError, match="stage 1: 4 selected prompts, fewer than the batch size 8; .* lower data.x"):
        stage_dataloader(list(range(10)), 1, [100, 103, 105, 107], 3, ids, 8, lambda b: b, batch_key="data.x")


def test_a_stage_made_at_other_weights_is_selected_anew(tmp_path, pool, caplog):
    """``source`` names the weights (a checkpoint's id): the same id reuses the stage's selection, another id (a rerun
    from another checkpoint into the same directory) deletes the stage's work and selects again."""
    train, val, featurizer, calls = pool
    sched = StageSchedule(num_stages=2, steps_per_stage=4, fraction=0.2, strategy="cropi")
    first = {"step": 4, "checkpoint_id": "a"}
    s1 = stage_boundary(1, 4, SelectionConfig(sched, {"m": 1}), train, val, tmp_path, featurizer, source=first)
    assert len(calls) == 1 and json.loads((stage_dir(tmp_path, 1) / "source.json").read_text()) == first
    assert stage_boundary(1, 4, SelectionConfig(sched, {"m": 1}), train, val, tmp_path, featurizer, source=first) == s1
    assert len(calls) == 1  # same weights: reused
    (stage_dir(tmp_path, 1) / "features" / "stale").write_text("")  # e.g. a shard of the other weights
    other = {"step": 4, "checkpoint_id": "b"}
    again = stage_boundary(1, 4, SelectionConfig(sched, {"m": 1}), train, val, tmp_path, featurizer, source=other)
    assert len(calls) == 2 and "computed at other weights" in caplog.text
    assert not (stage_dir(tmp_path, 1) / "features" / "stale").exists()
    assert json.loads((stage_dir(tmp_path, 1) / "source.json").read_text()) == other
    assert again.selected_ids == s1.selected_ids  # the same weights here: the same selection, recomputed


def test_only_the_newest_checkpoints_are_kept_after_a_resume(tmp_path):
    """verl forgets its saves on a resume and deletes only ``global_step_N/actor``: the trainer keeps the newest
    ``max_actor_ckpt_to_keep`` whole folders, never the latest, and removes the ones verl emptied."""
    from cropi_verl.trainer.cropi_trainer import prune_checkpoints

    for n in (2, 4, 6, 8, 10, 12):
        (tmp_path / f"global_step_{n}" / "actor").mkdir(parents=True)
        (tmp_path / f"global_step_{n}" / "data.pt").write_text("")
    (tmp_path / "global_step_10" / "actor").rmdir()  # verl deleted its actor/ and left data.pt
    (tmp_path / "global_step_x").mkdir()
    deleted = prune_checkpoints(tmp_path, keep=3, latest=12)
    assert sorted(p.name for p in deleted) == ["global_step_10", "global_step_2", "global_step_4", "global_step_6"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["global_step_12", "global_step_8", "global_step_x"]
    assert prune_checkpoints(tmp_path, keep=1, latest=8) == []  # the latest (resumed from) is kept though older
    assert prune_checkpoints(tmp_path, keep=None, latest=12) == []
