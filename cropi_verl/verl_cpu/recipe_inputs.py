"""The inputs a GPU recipe reads from outside the repository, made locally for ``DEVICE=cpu``
(``recipes/_cropi_common.sh``): the raw datasets (``cropi_verl.data.raw_fixtures``: the embedded task in GSM8K's,
MATH's, DeepScaleR's ... own raw formats) and a tiny policy warmed up on the paper's prompt format.

    python -m cropi_verl.verl_cpu.recipe_inputs [--raw-dir DIR]

writes ``DIR/<dataset>[_<split>].jsonl`` (atomically; the same files every time), builds the policy (cached under
``$CROPI_CACHE_DIR``, ~40 s on 2 cores the first time) and prints its directory as its last line; ``--where`` only
prints that directory.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cropi_verl.data.raw_fixtures import write_raw_fixtures
from cropi_verl.data.toy_task import ToyTaskConfig
from cropi_verl.models.tiny_policy import TinyPolicyConfig, build_tiny_policy, tiny_policy_dir
from cropi_verl.utils.cli import HelpFormatter, one_line_errors, step

# 300 pool prompts (a 10% selection of ~27 after the held-out draw), 64 per validation split; a short warm-up
TASK = ToyTaskConfig(n_train=300, n_val=64, n_sft=2000)
POLICY = TinyPolicyConfig(task=TASK, warmup_steps=300, prompt="paper")


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--raw-dir", type=Path, help="where the raw dataset files go (none: the policy only)")
    ap.add_argument("--where", action="store_true", help="print the policy's directory, build nothing")
    args = ap.parse_args(argv)
    if args.where:
        print(tiny_policy_dir(POLICY))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.raw_dir:
        step(f"writing the raw datasets into {args.raw_dir}")
        counts = write_raw_fixtures(args.raw_dir, TASK)
        print(f"raw datasets in {args.raw_dir}: " + ", ".join(f"{k} {v}" for k, v in counts.items()), file=sys.stderr)
    step("the tiny policy's warm-up (unless cached)")
    print(build_tiny_policy(POLICY))
    return 0


if __name__ == "__main__":
    sys.exit(main())
