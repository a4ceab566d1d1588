"""The embedded task: determinism, disjoint splits, every answer verifiable by the reward."""

from __future__ import annotations

import pandas as pd
import pytest

from cropi_verl.data.toy_task import FAMILIES, ToyTaskConfig, build_toy_task, generate_problems, in_prompt_format
from cropi_verl.data.verl_format import row_ids, validate_verl_frame
from cropi_verl.rewards import compute_score

CFG = ToyTaskConfig(seed=3, n_train=300, n_val=20, n_sft=200)


def test_same_seed_same_frames_other_seed_differs():
    a, b, c = build_toy_task(CFG), build_toy_task(CFG), build_toy_task(ToyTaskConfig(seed=4, n_train=300, n_val=20, n_sft=200))
    for split in a:
        pd.testing.assert_frame_equal(a[split], b[split])
    assert list(a["train"]["reward_model"]) != list(c["train"]["reward_model"])


def test_cell_streams_do_not_depend_on_n():
    small = generate_problems(15, "train", seed=1)
    large = generate_problems(45, "train", seed=1)
    assert large[:15] == small


def test_splits_valid_disjoint_and_ids_unique():
    frames = build_toy_task(CFG)
    keys = {}
    all_ids = []
    for split, df in frames.items():
        assert validate_verl_frame(df, split) == []
        all_ids += row_ids(df)
        keys[split] = {(e["family"], q[-1]["content"]) for e, q in zip(df["extra_info"], df["prompt"])}
    assert len(all_ids) == len(set(all_ids))
    held_out = keys["val_add"] | keys["val_sub"] | keys["val_mixed"]
    assert not held_out & keys["train"]
    assert not held_out & keys["sft"]


def test_composition_targeted_and_untargeted():
    frames = build_toy_task(CFG)
    fam = lambda df: {e["family"] for e in df["extra_info"]}  # noqa: E731
    tier = lambda df: {e["tier"] for e in df["extra_info"]}  # noqa: E731
    assert fam(frames["val_add"]) == {"add"} and tier(frames["val_add"]) == {2}
    assert fam(frames["val_sub"]) == {"sub"}
    assert fam(frames["val_mixed"]) == set(FAMILIES)
    counts = pd.Series([(e["family"], e["tier"]) for e in frames["train"]["extra_info"]]).value_counts()
    assert len(counts) == 15 and counts.max() - counts.min() == 0  # uniform pool


def test_reference_solutions_score_one_and_are_correct_arithmetic():
    df = build_toy_task(CFG)["train"]
    for src, e, rm, p in zip(df["data_source"], df["extra_info"], df["reward_model"], df["prompt"]):
        assert compute_score(src, e["solution"], rm["ground_truth"]) == 1.0
        q = p[-1]["content"]
        nums = [int(x) for x in __import__("re").findall(r"\d+", q)]
        gt = int(rm["ground_truth"])
        expected = {
            "add": lambda: nums[0] + nums[1],
            "sub": lambda: nums[0] - nums[1],
            "mul": lambda: nums[0] * nums[1],
            "max": lambda: max(nums),
            "rev": lambda: int(str(nums[0])[::-1]),
        }[e["family"]]()
        assert gt == expected, q


def test_unboxed_warm_up_answers_only_in_the_chosen_families():
    """``sft_unboxed``: that share of a family's warm-up answers loses its box (reward 0, same work line); other
    families and every other split are untouched; a mapping and pairs give the same config."""
    cfg = ToyTaskConfig(seed=3, n_train=300, n_val=20, n_sft=600, sft_unboxed={"add": 1.0, "sub": 0.5})
    assert cfg == ToyTaskConfig(seed=3, n_train=300, n_val=20, n_sft=600, sft_unboxed=(("sub", 0.5), ("add", 1.0)))
    frames = build_toy_task(cfg)
    plain = build_toy_task(ToyTaskConfig(seed=3, n_train=300, n_val=20, n_sft=600, sft_unboxed=None))
    for split in ("train", "val_add", "val_sub", "val_mixed"):
        pd.testing.assert_frame_equal(frames[split], plain[split])
    boxed = {f: [] for f in FAMILIES}
    for e, p, rm, src in zip(frames["sft"]["extra_info"], plain["sft"]["extra_info"], frames["sft"]["reward_model"],
                             frames["sft"]["data_source"]):
        has_box = "\\boxed{" in e["solution"]
        boxed[e["family"]].append(has_box)
        assert compute_score(src, e["solution"], rm["ground_truth"]) == float(has_box)
        assert e["solution"] == (p["solution"] if has_box else p["solution"].split(". \\boxed")[0] + ".")
    assert not any(boxed["add"]) and all(boxed["mul"] + boxed["max"] + boxed["rev"])
    assert 0.35 < 1 - sum(boxed["sub"]) / len(boxed["sub"]) < 0.65


def test_unboxed_config_normalised_and_checked():
    assert ToyTaskConfig().sft_unboxed == ToyTaskConfig(sft_unboxed={"sub": 0.5, "add": 0.5, "mul": 0.0}).sft_unboxed
    for bad, msg in (({"div": 0.5}, "div=0.5"), ({"add": 1.5}, "add=1.5")):
        with pytest.raises(ValueError, match=f"task.sft_unboxed: {msg}: expected a family of"):
            ToyTaskConfig(sft_unboxed=bad)


def test_prompt_formats_keep_the_question_last_and_the_examples_are_no_problem_of_any_split():
    frames = build_toy_task(ToyTaskConfig(n_train=60, n_val=8, n_sft=100))
    val = frames["val_add"]
    paper, fewshot = in_prompt_format(val, "paper"), in_prompt_format(val, "fewshot")
    for p, q, f in zip(val["prompt"], paper["prompt"], fewshot["prompt"]):
        assert [m["role"] for m in q] == ["system", "user"] and q[-1] == p[-1]
        assert [m["role"] for m in f] == ["system", "user", "assistant", "user", "assistant", "user"] and f[-1] == p[-1]
        assert "The answer is <number>." in f[0]["content"]
    questions = {p[-1]["content"] for frame in frames.values() for p in frame["prompt"]}
    shots = [m["content"] for m in fewshot["prompt"].iloc[0][1:5]]
    assert not questions & set(shots)
    # the worked examples' answers are what the reward accepts: 120 + 250 and 700 - 400
    assert compute_score("cropi_toy/add", shots[1], "370") == 1.0 and compute_score("cropi_toy/sub", shots[3], "300") == 1.0
    assert in_prompt_format(val, "toy") is val
    with pytest.raises(ValueError, match="prompt format 'chat': expected one of toy, paper, fewshot"):
        in_prompt_format(val, "chat")


def test_the_validation_tier_is_a_setting():
    frames = build_toy_task(ToyTaskConfig(n_train=60, n_val=8, n_sft=100, val_tier=1))
    assert {e["tier"] for name in ("val_add", "val_sub", "val_mixed") for e in frames[name]["extra_info"]} == {1}
    with pytest.raises(ValueError, match=r"task.val_tier=4: expected one of \(1, 2, 3\)"):
        ToyTaskConfig(val_tier=4)
