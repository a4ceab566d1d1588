"""Ctrl-C (SIGINT) and SIGTERM end the demo and the scripts with one line, what finished and where it stopped, and exit
status 130 / 143 (issue 21): each command runs in a subprocess, signalled during a long step."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from policy_helpers import saved_random_policy, toy_prompts
from scripts_helpers import ROOT


def _interrupt(argv: list[str], marker: str, sig: signal.Signals, env: dict | None = None) -> tuple[int, str]:
    """Run ``argv`` (after the interpreter), send ``sig`` once ``marker`` shows on its stderr (tqdm's ``\\r``
    updates count as lines); (exit status, last non-blank stderr line)."""
    proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, **(env or {})))
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if marker in line:
            break
    else:
        pytest.fail(f"{marker!r} never showed: {''.join(seen)[-3000:]}")
    time.sleep(0.5)
    proc.send_signal(sig)
    _, rest = proc.communicate(timeout=120)
    lines = [line.strip() for line in [*seen, *rest.splitlines()] if line.strip()]
    assert not any(line.startswith("Traceback") for line in lines), "\n".join(lines[-40:])
    return proc.returncode, lines[-1]


@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_the_demo_interrupted_during_the_policy_warm_up(tmp_path, sig, status):
    env = {"CROPI_CACHE_DIR": str(tmp_path / "cache")}  # a fresh cache: the warm-up runs
    code, line = _interrupt(["-m", "cropi_verl.local.main", "preset=quick", f"output_dir={tmp_path / 'run'}"],
                            "warm-up SFT", sig, env)
    assert code == status
    assert line == (f"interrupted by {sig.name} during the tiny policy's warm-up (unless cached); finished: the task's "
                    "data; rerun the same command to resume")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupts")
    return saved_random_policy(root / "policy"), toy_prompts(root / "prompts.parquet")


def test_collect_rollouts_terminated_during_the_collection(inputs, tmp_path):
    policy, prompts = inputs
    out = tmp_path / "rollouts"
    code, line = _interrupt(["scripts/collect_rollouts.py", "--model", str(policy), "--input", str(prompts), "--out",
                             str(out), "--n", "128", "--max-new-tokens", "128", "--shard-size", "2"],
                            "rollouts (hf)", signal.SIGTERM)
    assert code == 143
    assert line == (f"interrupted by SIGTERM during collecting into {out} (finished shards are kept); finished: "
                    f"loading {policy}; rerun the same command to resume")


def test_evaluate_interrupted_says_a_rerun_starts_over(inputs):
    policy, prompts = inputs
    code, line = _interrupt(["scripts/evaluate.py", "--model", str(policy), "--set", f"a={prompts}", "--k", "16",
                             "--max-new-tokens", "128", "--batch-size", "1"], "eval:", signal.SIGINT)
    assert code == 130
    assert line == (f"interrupted by SIGINT during evaluating a; finished: loading {policy}; rerun the same command "
                    "to start over")


@pytest.mark.parametrize("mode,said", [
    ("auto", "latest checkpoint: {d}/global_step_6"),
    ("disable", "latest checkpoint: {d}/global_step_6; with trainer.resume_mode=disable a rerun starts over: set it "
                "to auto"),
    ("resume_path", "latest checkpoint: {d}/global_step_6; with trainer.resume_mode=resume_path a rerun starts from "
                    "/r/global_step_3: set it to auto"),
])
def test_the_trainers_interruption_line_names_where_a_rerun_goes_on(tmp_path, mode, said):
    """What ``python -m cropi_verl.trainer.main`` adds to its interruption line (the run itself: the slow SIGTERM test
    of tests/test_verl_cpu.py), from verl's checkpoint tracker file."""
    from omegaconf import OmegaConf

    from cropi_verl.trainer.main import resume_point

    config = OmegaConf.create({"trainer": {"default_local_dir": str(tmp_path), "resume_mode": mode,
                                           "resume_from_path": "/r/global_step_3"}})
    assert resume_point(config).startswith(f"no checkpoint in {tmp_path} yet")
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("6\n")
    assert resume_point(config) == said.format(d=tmp_path)
