#!/usr/bin/env python
"""Prepare verl-format parquet files.

Real data (the paper's pool and benchmarks), from the HF hub or local files:

    python scripts/prepare_data.py --out data/math \
        --train gsm8k math deepscaler --eval gsm8k:test math500 aime24 amc23 gaokao2023en olympiadbench \
        [--local gsm8k=/path/gsm8k_train.jsonl ...]

writes ``train.parquet`` (the pool, ids unique across sources) and one ``<name>.parquet`` per eval set.

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

from cropi_verl.data.preprocess import SPECS, convert, load_raw
from cropi_verl.data.toy_task import ToyTaskConfig, build_toy_task
from cropi_verl.data.verl_format import validate_verl_frame, write_verl_parquet


def _parse_item(item: str) -> tuple[str, str | None]:
    name, _, split = item.partition(":")
    if name not in SPECS:
        raise SystemExit(f"error: unknown dataset {name!r}; known: {', '.join(sorted(SPECS))}")
    return name, split or None


def _write(frame: pd.DataFrame, path: Path) -> None:
    problems = validate_verl_frame(frame, str(path))
    if problems:
        raise SystemExit("error: " + "\n".join(map(str, problems)))
    write_verl_parquet(frame, path)
    print(f"wrote {path} ({len(frame)} rows)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="output directory")
    ap.add_argument("--toy", action="store_true", help="write the embedded task instead of real data")
    ap.add_argument("--seed", type=int, default=0, help="embedded task seed")
    ap.add_argument("--n-train", type=int, default=ToyTaskConfig.n_train, help="embedded task pool size")
    ap.add_argument("--n-val", type=int, default=ToyTaskConfig.n_val, help="embedded task prompts per val set")
    ap.add_argument("--train", nargs="*", default=[], metavar="NAME[:SPLIT]", help="datasets for the pool")
    ap.add_argument("--eval", nargs="*", default=[], metavar="NAME[:SPLIT]", help="eval/validation sets")
    ap.add_argument("--local", nargs="*", default=[], metavar="NAME=PATH", help="read NAME from a local file")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    if args.toy:
        cfg = ToyTaskConfig(seed=args.seed, n_train=args.n_train, n_val=args.n_val)
        for split, frame in build_toy_task(cfg).items():
            _write(frame, args.out / f"{split}.parquet")
        return 0
    if not args.train and not args.eval:
        ap.error("give --toy, or --train and/or --eval dataset names")
    local = {}
    for item in args.local:
        name, sep, path = item.partition("=")
        if not sep:
            ap.error(f"--local expects NAME=PATH, got {item!r}")
        local[name] = path

    def build(item: str, split_name: str, start: int) -> pd.DataFrame:
        name, split = _parse_item(item)
        key = item if item in local else name
        raw = load_raw(SPECS[name], local.get(key), split)
        frame, skipped = convert(SPECS[name], raw, split_name, start, source=local.get(key, SPECS[name].hf_path))
        print(f"{item}: {len(frame)} rows, {len(skipped)} skipped")
        return frame

    if args.train:
        parts, start = [], 0
        for item in args.train:
            parts.append(build(item, "train", start))
            start += len(parts[-1])
        _write(pd.concat(parts, ignore_index=True), args.out / "train.parquet")
    for item in args.eval:
        _write(build(item, "val", 0), args.out / f"{item.replace(':', '_')}.parquet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
