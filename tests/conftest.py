"""Shared fixtures. Tests never touch the network: data is generated or read from tests/fixtures/."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"

# the cores shared out among the pytest-xdist workers (scripts/run_tests.sh), at most 2 threads each
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray starts its workers at nice 15 (its worker_niceness default): beside the other xdist workers' processes at nice 0,
# a test whose work runs in Ray actors (verl's trainer, the influence workers) got a few percent of a core and took
# 4-6x its time alone. Here every test's processes share the cores alike (this and its subprocesses' Ray clusters).
os.environ.setdefault("RAY_worker_niceness", "0")

# The files with the most seconds in the suite (``--durations``; docs/results.md section 9), heaviest first: with
# ``--dist loadfile --no-loadscope-reorder`` (scripts/run_tests.sh) the workers start on these, so no long file is
# left for the end while the other workers sit idle. The other files follow, those with more tests first.
HEAVIEST_FILES = ("test_verl_trainer.py", "test_demo_cli.py", "test_verl_cpu.py", "test_influence_workers.py",
                  "test_bad_inputs.py", "test_hf_rollout.py", "test_cli_scripts.py", "test_rollouts.py", "test_plan.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    tests_per_file = Counter(item.path.name for item in items)

    def rank(item: pytest.Item) -> tuple[int, int, str]:
        name = item.path.name
        heavy = HEAVIEST_FILES.index(name) if name in HEAVIEST_FILES else len(HEAVIEST_FILES)
        return heavy, -tests_per_file[name], name

    items.sort(key=rank)  # stable: a file's own tests keep their order


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES
