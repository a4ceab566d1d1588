"""The verl-format validator reports every bad row with file, row and reason."""

from __future__ import annotations

import pandas as pd
import pytest

from cropi_verl.data.verl_format import (
    DataValidationError,
    make_record,
    read_verl_parquet,
    row_ids,
    validate_verl_frame,
    write_verl_parquet,
)


def _good(i: int) -> dict:
    return make_record([{"role": "user", "content": f"q{i}"}], str(i), "cropi_toy/add", i, "train")


def test_round_trip(tmp_path):
    path = write_verl_parquet([_good(i) for i in range(3)], tmp_path / "a.parquet")
    df = read_verl_parquet(path)
    assert row_ids(df) == [0, 1, 2]
    assert df["reward_model"][1]["ground_truth"] == "1"
    assert list(df["prompt"][2]) == [{"role": "user", "content": "q2"}]
    assert not list(tmp_path.glob(".*tmp"))  # no temp files left behind


def test_missing_column_is_reported_per_column(tmp_path):
    df = pd.DataFrame([_good(0)]).drop(columns=["reward_model", "ability"])
    problems = validate_verl_frame(df, "x.parquet")
    assert sorted(p.key for p in problems) == ["ability", "reward_model"]
    assert all(p.row is None and p.reason == "missing column" for p in problems)


def test_every_bad_row_is_reported(tmp_path):
    rows = [_good(i) for i in range(6)]
    rows[1]["prompt"] = []  # empty prompt
    rows[2]["reward_model"] = {"style": "rule", "ground_truth": ""}  # missing ground truth
    rows[3]["extra_info"] = {"index": 4, "split": "train"}  # duplicates row 4's id
    rows[5]["prompt"] = [{"role": "user", "content": "   "}]  # whitespace-only user turn
    path = write_verl_parquet(rows, tmp_path / "bad.parquet")
    with pytest.raises(DataValidationError) as err:
        read_verl_parquet(path)
    lines = str(err.value).splitlines()
    assert lines[0] == f"5 problem(s) in {path}:"
    assert f"{path}: row 1: prompt: empty prompt (expected a non-empty chat list)" in lines
    assert f"{path}: row 2: reward_model.ground_truth: missing ground truth" in lines
    assert f"{path}: row 3: extra_info.index: duplicate id 4 (2 rows)" in lines
    assert f"{path}: row 4: extra_info.index: duplicate id 4 (2 rows)" in lines
    assert f"{path}: row 5: prompt: no non-empty user message" in lines


def test_non_integer_id_and_missing_file(tmp_path):
    rows = [_good(0)]
    rows[0]["extra_info"] = {"index": "zero", "split": "train"}
    problems = validate_verl_frame(pd.DataFrame(rows), "f")
    assert [str(p) for p in problems] == ["f: row 0: extra_info.index: expected an integer row id, got 'zero'"]
    with pytest.raises(FileNotFoundError, match="nope.parquet: no such prompts parquet"):
        read_verl_parquet(tmp_path / "nope.parquet")
