#!/usr/bin/env python
r"""Prepare verl-format parquet files.

Real data (the paper's pool and benchmarks), from the HF hub or local files:

    python scripts/prepare_data.py --out data/math \
        --train gsm8k math deepscaler --eval gsm8k:test math500 aime24 amc23 gaokao2023en olympiadbench \
        --heldout gsm8k:train=400 math:test=400 [--local gsm8k=/path/gsm8k_train.jsonl ...] [--raw-dir DIR]

writes ``train.parquet`` (the pool, ids unique across sources), one ``<name>[_<split>].parquet`` per eval set and
one ``<name>_heldout.parquet`` per held-out validation set: N prompts of NAME[:SPLIT] drawn with ``--seed`` from
those whose question is in no eval set, and removed from the pool (questions matched by text). With the lines
above, ``gsm8k_heldout`` is 400 GSM8K train prompts (not trained on) and ``math_heldout`` 400 MATH test prompts
outside MATH500. ``--raw-dir DIR`` reads every dataset from ``DIR/<name>[_<split>].jsonl|json|parquet`` instead
of the hub (the split suffix only for a split other than the dataset's default).

The embedded task:

    python scripts/prepare_data.py --toy --out data/toy [--seed 0]

writes ``train.parquet``, ``val_add.parquet``, ``val_sub.parquet``, ``val_mixed.parquet`` and ``sft.parquet``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd

from cropi_verl.data.preprocess import SPECS, convert, frame_questions, load_raw, raw_file, without_questions
from cropi_verl.data.toy_task import ToyTaskConfig, build_toy_task
from cropi_verl.data.verl_format import validate_verl_frame, write_verl_parquet
from cropi_verl.utils.cli import HelpFormatter, one_line_errors
from cropi_verl.utils.draw import seeded_subset


def _parse_item(item: str) -> tuple[str, str | None]:
    name, _, split = item.partition(":")
    if name not in SPECS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(SPECS))}")
    return name, split or None


def _parse_heldout(item: str) -> tuple[str, str, int]:
    """``NAME[:SPLIT]=N`` -> (``NAME[:SPLIT]``, NAME, N)."""
    source, _, n = item.rpartition("=")
    if not source or not n.isdigit() or int(n) < 1:
        raise ValueError(f"--heldout expects NAME[:SPLIT]=N with N >= 1, got {item!r}")
    return source, _parse_item(source)[0], int(n)


def _draw(frame: pd.DataFrame, n: int, seed: int, item: str) -> pd.DataFrame:
    """``n`` rows of ``frame`` drawn with ``seed``, in file order."""
    if len(frame) < n:
        raise ValueError(f"--heldout {item}={n}: only {len(frame)} prompts are outside the eval sets")
    return frame.iloc[seeded_subset(len(frame), n, seed)].reset_index(drop=True)


def _write(frame: pd.DataFrame, path: Path) -> None:
    problems = validate_verl_frame(frame, str(path))
    if problems:
        raise SystemExit("error: " + "\n".join(map(str, problems)))
    write_verl_parquet(frame, path)
    print(f"wrote {path} ({len(frame)} rows)")


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="output directory")
    ap.add_argument("--toy", action="store_true", help="write the embedded task instead of real data")
    ap.add_argument("--seed", type=int, default=0, help="embedded task seed; held-out draws")
    ap.add_argument("--n-train", type=int, default=ToyTaskConfig.n_train, help="embedded task pool size")
    ap.add_argument("--n-val", type=int, default=ToyTaskConfig.n_val, help="embedded task prompts per val set")
    ap.add_argument("--train", nargs="*", default=[], metavar="NAME[:SPLIT]", help="datasets for the pool")
    ap.add_argument("--eval", nargs="*", default=[], metavar="NAME[:SPLIT]", help="eval sets (accuracy is reported on them)")
    ap.add_argument("--heldout", nargs="*", default=[], metavar="NAME[:SPLIT]=N",
                    help="held-out validation sets: N prompts outside every eval set, removed from the pool")
    ap.add_argument("--local", nargs="*", default=[], metavar="NAME=PATH", help="read NAME from a local file")
    ap.add_argument("--raw-dir", type=Path, help="read every dataset from DIR/<name>[_<split>].jsonl|json|parquet")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    if args.toy:
        cfg = ToyTaskConfig(seed=args.seed, n_train=args.n_train, n_val=args.n_val)
        for split, frame in build_toy_task(cfg).items():
            _write(frame, args.out / f"{split}.parquet")
        return 0
    if not (args.train or args.eval or args.heldout):
        ap.error("give --toy, or --train, --eval and/or --heldout dataset names")
    local = {}
    for item in args.local:
        name, sep, path = item.partition("=")
        if not sep:
            ap.error(f"--local expects NAME=PATH, got {item!r}")
        local[name] = path

    heldout = [_parse_heldout(item) for item in args.heldout]
    names = [name for _, name, _ in heldout]
    if len(set(names)) < len(names):
        ap.error(f"--heldout names one dataset twice ({names}): each writes <name>_heldout.parquet")

    def build(item: str, split_name: str, start: int, exclude: set[str], why: str) -> pd.DataFrame:
        name, split = _parse_item(item)
        key = item if item in local else name
        path = local.get(key) or (raw_file(args.raw_dir, SPECS[name], split) if args.raw_dir else None)
        raw, n_excluded = without_questions(SPECS[name], load_raw(SPECS[name], path, split), exclude)
        frame, skipped = convert(SPECS[name], raw, split_name, start, source=str(path or SPECS[name].hf_path))
        print(f"{item}: {len(frame)} rows, {len(skipped)} skipped" + (f", {n_excluded} {why}" if n_excluded else ""))
        return frame

    evaluated: set[str] = set()
    for item in args.eval:
        frame = build(item, "val", 0, set(), "")
        evaluated |= frame_questions(frame)
        _write(frame, args.out / f"{item.replace(':', '_')}.parquet")
    held: set[str] = set()
    for source, name, n in heldout:
        frame = _draw(build(source, "val", 0, evaluated, "in an eval set"), n, args.seed, source)
        held |= frame_questions(frame)
        _write(frame, args.out / f"{name}_heldout.parquet")
    if args.train:
        parts, start = [], 0
        for item in args.train:
            parts.append(build(item, "train", start, held, "held out for validation"))
            start += len(parts[-1])
        _write(pd.concat(parts, ignore_index=True), args.out / "train.parquet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
