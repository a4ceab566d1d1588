"""Preprocessors on local fixtures (no hub): the paper's template, the extracted answers, skip accounting, local
raw directories, held-out validation sets (disjoint from every eval set, removed from the pool)."""

from __future__ import annotations

import pandas as pd
import pytest

from cropi_verl.data.preprocess import SPECS, SYSTEM_PROMPT, convert, load_raw, raw_file
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


def _questions(path) -> set[str]:
    return {list(p)[-1]["content"] for p in read_verl_parquet(path)["prompt"]}


def test_raw_dir_names_a_file_per_dataset_and_split(fixtures_dir):
    raw = fixtures_dir / "raw"
    assert raw_file(raw, SPECS["gsm8k"]) == raw_file(raw, SPECS["gsm8k"], "train") == raw / "gsm8k.jsonl"
    assert raw_file(raw, SPECS["gsm8k"], "test") == raw / "gsm8k_test.jsonl"
    assert raw_file(raw, SPECS["math500"], "test") == raw / "math500.jsonl"  # MATH500's default split is test
    with pytest.raises(FileNotFoundError, match="no aime24_test.jsonl/.json/.parquet for dataset 'aime24' split 'test'"):
        raw_file(raw, SPECS["aime24"], "test")


def test_heldout_sets_are_disjoint_from_every_eval_set_and_removed_from_the_pool(tmp_path, fixtures_dir):
    from scripts_helpers import run_script

    out = tmp_path / "data"
    run_script("prepare_data.py", "--out", str(out), "--raw-dir", str(fixtures_dir / "raw"), "--train", "gsm8k", "math",
               "--eval", "gsm8k:test", "math500", "--heldout", "gsm8k:train=2", "math:test=2")
    # gsm8k_test.jsonl repeats the train question about Natalia (other whitespace); math_test.jsonl holds MATH500's
    assert _questions(out / "gsm8k_heldout.parquet") == {
        "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?",
        "A shop sells 1,200 pens. How many?"}
    assert _questions(out / "math_heldout.parquet") == {"What is $7-4$?", "Compute $3 \\cdot 4$."}
    train = read_verl_parquet(out / "train.parquet")
    assert list(train["data_source"]) == ["gsm8k", "math", "math"] and row_ids(train) == [0, 1, 2]
    assert _questions(out / "train.parquet") == {
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips "
        "did Natalia sell altogether in April and May?", "What is $\\frac{1}{2} + \\frac{1}{4}$?", "Compute $\\sqrt{16}$."}
    held = _questions(out / "gsm8k_heldout.parquet") | _questions(out / "math_heldout.parquet")
    evaluated = _questions(out / "gsm8k_test.parquet") | _questions(out / "math500.parquet")
    assert not held & evaluated and not held & _questions(out / "train.parquet")


@pytest.mark.parametrize("args, message", [
    (["--heldout", "gsm8k:train=3"], "--heldout gsm8k:train=3: only 2 prompts are outside the eval sets"),
    (["--heldout", "gsm8k"], "--heldout expects NAME[:SPLIT]=N with N >= 1, got 'gsm8k'"),
    (["--heldout", "gsm8k=1", "gsm8k:test=1"], "--heldout names one dataset twice"),
    (["--eval", "aime24:test"], "no aime24_test.jsonl/.json/.parquet for dataset 'aime24'"),
])
def test_prepare_data_refuses_bad_heldout_and_missing_raw_files(args, message, tmp_path, fixtures_dir):
    from scripts_helpers import run_script

    base = ["--out", str(tmp_path), "--raw-dir", str(fixtures_dir / "raw"), "--eval", "gsm8k:test"]
    proc = run_script("prepare_data.py", *base, *args, check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
