#!/usr/bin/env python
"""Redraw a demo run's plots from its outputs: accuracy curves per method and what each stage selected.

    python scripts/plot.py outputs/tiny_cpu

Reads ``summary.json``, ``<method>/result.json``, the pool rollouts and prompts; writes ``curves.png`` and
``selection_<method>.png`` into the run directory.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cropi_verl.data.verl_format import read_verl_parquet
from cropi_verl.eval.plots import plot_run
from cropi_verl.local.main import pool_summary
from cropi_verl.rollout.records import read_rollouts
from cropi_verl.utils.cli import HelpFormatter, one_line_errors


@one_line_errors(resumes=False)
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("run", type=Path, help="the demo's output_dir")
    args = ap.parse_args(argv)
    summary_path = args.run / "summary.json"
    if not summary_path.is_file():
        raise SystemExit(f"error: {summary_path}: no summary (run the demo first: bash recipes/run_cropi_tiny_cpu.sh)")
    summary = json.loads(summary_path.read_text())
    results = {m: json.loads((args.run / m / "result.json").read_text()) for m in summary["methods"]}
    _, pool = pool_summary(read_rollouts(args.run / "rollouts" / "train" / "rollouts.parquet"),
                           read_verl_parquet(args.run / "data" / "train.parquet"))
    for path in plot_run(args.run, results, summary, pool):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
