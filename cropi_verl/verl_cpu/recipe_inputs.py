"""The inputs a GPU recipe reads from outside the repository, made locally for ``DEVICE=cpu``
(``recipes/_cropi_common.sh``): the raw datasets (``cropi_verl.data.raw_fixtures``: the embedded task in GSM8K's,
MATH's, DeepScaleR's ... own raw formats) and a tiny policy warmed up on the paper's prompt format.

    python -m cropi_verl.verl_cpu.recipe_inputs [--raw-dir DIR [--pool N] [--val N]] [--raw-only]

writes ``DIR/<dataset>[_<split>].jsonl`` (atomically; the same files for the same sizes) from a task of ``--pool``
pool prompts and ``--val`` prompts per validation split (recorded in ``DIR/recipe_inputs.json``: a folder made at
other sizes is refused, as its prepared data would be stale), builds the policy (cached under ``$CROPI_CACHE_DIR``,
~40 s on 2 cores the first time; not with ``--raw-only``, for a recipe given its own ``MODEL``) and prints its
directory as its last line; ``--where`` only prints that directory.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

from cropi_verl.data.raw_fixtures import write_raw_fixtures
from cropi_verl.data.toy_task import ToyTaskConfig
from cropi_verl.models.tiny_policy import TinyPolicyConfig, build_tiny_policy, tiny_policy_dir
from cropi_verl.utils.atomic import atomic_write_json
from cropi_verl.utils.cli import HelpFormatter, one_line_errors, step
from cropi_verl.utils.config_rules import Count, arg_type

# 300 pool prompts (a 10% selection of ~27 after the held-out draw), 64 per validation split; a short warm-up
TASK = ToyTaskConfig(n_train=300, n_val=64, n_sft=2000)
POLICY = TinyPolicyConfig(task=TASK, warmup_steps=300, prompt="paper")
SIZES_FILE = "recipe_inputs.json"


def check_sizes(raw_dir: Path, sizes: dict[str, int]) -> None:
    """Refuse a raw folder written at other sizes (the recipe would reuse the data prepared from it)."""
    recorded = raw_dir / SIZES_FILE
    if recorded.is_file() and (old := json.loads(recorded.read_text())) != sizes:
        raise ValueError(f"{recorded}: these raw datasets were made with {old}, not {sizes}: give another OUT "
                         f"(or RAW_DIR) for other CPU_POOL / CPU_VAL")


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--raw-dir", type=Path, help="where the raw dataset files go (none: the policy only)")
    ap.add_argument("--pool", type=arg_type(Count), default=TASK.n_train, help="pool prompts of the raw train files")
    ap.add_argument("--val", type=arg_type(Count), default=TASK.n_val, help="prompts per validation split of the task")
    ap.add_argument("--raw-only", action="store_true", help="write the raw datasets only, no policy")
    ap.add_argument("--where", action="store_true", help="print the policy's directory, build nothing")
    args = ap.parse_args(argv)
    if args.where:
        print(tiny_policy_dir(POLICY))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.raw_dir:
        sizes = {"pool": args.pool, "val": args.val}
        check_sizes(args.raw_dir, sizes)
        step(f"writing the raw datasets into {args.raw_dir}")
        counts = write_raw_fixtures(args.raw_dir, replace(TASK, n_train=args.pool, n_val=args.val))
        atomic_write_json(sizes, args.raw_dir / SIZES_FILE)
        print(f"raw datasets in {args.raw_dir}: " + ", ".join(f"{k} {v}" for k, v in counts.items()), file=sys.stderr)
    if args.raw_only:
        return 0
    step("the tiny policy's warm-up (unless cached)")
    print(build_tiny_policy(POLICY))
    return 0


if __name__ == "__main__":
    sys.exit(main())
