"""Preprocessors on local fixtures (no hub): the paper's template, the extracted answers, skip accounting."""

from __future__ import annotations

import pandas as pd
import pytest

from cropi_verl.data.preprocess import SPECS, SYSTEM_PROMPT, convert, load_raw
from cropi_verl.data.verl_format import read_verl_parquet, row_ids

EXPECTED = {  # dataset -> (answers of the kept records, number skipped)
    "gsm8k": (["72", "10", "1200"], 1),
    "math": (["\\frac{3}{4}", "4"], 1),
    "deepscaler": (["5"], 1),
    "math500": (["5"], 0),
    "aime24": (["204"], 0),
    "amc23": (["4.0"], 0),
    "gaokao2023en": (["2"], 0),
    "olympiadbench": (["8"], 1),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_convert_fixture(name, fixtures_dir):
    path = fixtures_dir / "raw" / f"{name}.jsonl"
    frame, skipped = convert(SPECS[name], load_raw(SPECS[name], path), "train", start_index=10, source=str(path))
    answers, n_skipped = EXPECTED[name]
    assert [r["ground_truth"] for r in frame["reward_model"]] == answers
    assert len(skipped) == n_skipped
    assert all(s.startswith(f"{path}: record ") for s in skipped)
    assert row_ids(frame) == list(range(10, 10 + len(answers)))
    assert set(frame["data_source"]) == {name}
    first = list(frame["prompt"][0])
    assert first[0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert first[1]["role"] == "user" and first[1]["content"]


def test_prepare_data_cli_real_and_toy(tmp_path, fixtures_dir):
    from scripts_helpers import run_script

    raw = fixtures_dir / "raw"
    out = tmp_path / "real"
    run_script(
        "prepare_data.py", "--out", str(out), "--train", "gsm8k", "math", "--eval", "math500", "aime24",
        "--local", f"gsm8k={raw / 'gsm8k.jsonl'}", f"math={raw / 'math.jsonl'}",
        f"math500={raw / 'math500.jsonl'}", f"aime24={raw / 'aime24.jsonl'}",
    )
    train = read_verl_parquet(out / "train.parquet")
    assert row_ids(train) == [0, 1, 2, 3, 4]  # unique across sources
    assert list(train["data_source"]) == ["gsm8k"] * 3 + ["math"] * 2
    assert len(read_verl_parquet(out / "aime24.parquet")) == 1

    toy = tmp_path / "toy"
    run_script("prepare_data.py", "--toy", "--out", str(toy), "--n-train", "150", "--n-val", "10")
    assert sorted(p.name for p in toy.glob("*.parquet")) == [
        "sft.parquet", "train.parquet", "val_add.parquet", "val_mixed.parquet", "val_sub.parquet"
    ]
    assert len(pd.read_parquet(toy / "train.parquet")) == 150


def test_unsupported_local_file(tmp_path):
    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n")
    with pytest.raises(ValueError, match=r"x.csv: unsupported file type '.csv'"):
        load_raw(SPECS["gsm8k"], bad)
