"""Config rules (pydantic, strict; also as argparse types) and the start-up checks of the demo and the GPU recipe:
every bad key is named with what was expected, all of them in one error; verl's own checks refuse a bad loss
aggregation or KL estimator; a key the shipped config does not define (a mistyped ``+key``) stops every entry point
before any work, in one line that lists the known keys."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from functools import partial

import pytest
from demo_helpers import ROOT, compose_config
from omegaconf import OmegaConf

from cropi_verl.local.config_checks import DEMO_RULES, check_demo_config
from cropi_verl.trainer.curriculum_config import CROPI_RULES, check_cropi_config
from cropi_verl.utils.config_rules import (
    Count,
    Fraction,
    GroupSize,
    OptionalPositive,
    arg_type,
    config_problems,
    one_of,
    unknown_keys,
)

_compose = partial(compose_config, "tiny_cpu")


@pytest.mark.parametrize("preset", ["default", "quick"])
def test_the_shipped_configs_pass(preset):
    check_demo_config(_compose(f"preset={preset}"))


@pytest.mark.parametrize("override, expected", [
    ("threads=0", "threads=0: expected an integer >= 1"),
    ("grpo.n=1", "grpo.n=1: expected an integer >= 2 (a group advantage needs 2 or more responses per prompt)"),
    ("offline.val_n=1", "offline.val_n=1: expected an integer >= 2"),
    ("eval.k=0", "eval.k=0: expected an integer >= 1"),
    ("eval.every=2.5", "eval.every=2.5: expected an integer >= 1"),
    ("curriculum.fraction=1.5", "curriculum.fraction=1.5: expected a number in (0, 1]"),
    ("curriculum.fraction=true", "curriculum.fraction=True: expected a number in (0, 1]"),
    ("grpo.lr=-1", "grpo.lr=-1: expected a number > 0"),
    ("grpo.temperature=nan", "grpo.temperature=nan: expected a number > 0"),
    ("influence.clip_ratio=0", "influence.clip_ratio=0: expected null or a number > 0"),
    ("influence.native=maybe", "influence.native='maybe': expected true or false"),
    ("curriculum.rescore=some", "curriculum.rescore='some': expected true, false or candidates"),
    ("curriculum.candidates.multiple=0.5", "curriculum.candidates.multiple=0.5: expected a number >= 1"),
    ("curriculum.candidates.explore=1.5", "curriculum.candidates.explore=1.5: expected a number in [0, 1]"),
    ("influence.metric=l2", "influence.metric='l2': expected one of cosine, inner_product"),
    ("methods=[cropi,foo]", "methods=['cropi', 'foo']: expected a non-empty list of cropi, influence_max"),
    ("methods=[]", "methods=[]: expected a non-empty list of cropi"),
    ("train.loggers=[console,wandbb]", "train.loggers=['console', 'wandbb']: expected a list of wandb, mlflow"),
    ("policy.num_attention_heads=3", "policy.num_attention_heads=3: expected a divisor of policy.hidden_size=128"),
    ("grpo.loss_agg_mode=mean", "grpo: Invalid loss_agg_mode: mean"),
    ("grpo.kl_loss_type=k9", "grpo: kl_loss_type='k9': verl's kl_penalty has no such estimator"),
])
def test_a_bad_key_is_named_with_what_was_expected(override, expected):
    with pytest.raises(ValueError) as e:
        check_demo_config(_compose(override))
    assert str(e.value).startswith("bad demo config: " + expected)


def test_every_bad_key_is_listed_in_one_line():
    with pytest.raises(ValueError) as e:
        check_demo_config(_compose("repeats=0", "influence.workers=0", "grpo.batch_size=0"))
    assert str(e.value) == ("bad demo config: repeats=0: expected an integer >= 1; influence.workers=0: expected an "
                            "integer >= 1; grpo.batch_size=0: expected an integer >= 1")


@pytest.mark.parametrize("config, group, rules", [("tiny_cpu", None, DEMO_RULES),
                                                  ("cropi_trainer", "cropi", CROPI_RULES)])
def test_every_number_and_flag_has_a_rule(config, group, rules):
    def leaves(node, prefix=""):
        for k, v in node.items():
            yield from leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [(f"{prefix}{k}", v)]

    values = OmegaConf.to_container(compose_config(config), resolve=True)
    scalar = {k for k, v in leaves(values[group] if group else values)
              if isinstance(v, (bool, int, float)) and not k.startswith("task.sft_unboxed.")}
    assert scalar - set(rules) == set()


def test_the_gpu_recipe_refuses_a_bad_cropi_key():
    overrides = ("cropi.projection.k=0", "cropi.popi.share_prompt=2", "cropi.rescore=1", "cropi.candidates.explore=-1",
                 "cropi.popi.pack=tree")
    cropi = OmegaConf.to_container(compose_config("cropi_trainer", *overrides).cropi)
    with pytest.raises(ValueError) as e:
        check_cropi_config(cropi, {})
    assert str(e.value).startswith("bad CROPI config: cropi.rescore=1: expected true, false or candidates; "
                                   "cropi.candidates.explore=-1: expected a number in [0, 1]; cropi.projection.k=0: "
                                   "expected an integer >= 1; cropi.popi.share_prompt=2: expected true or false; "
                                   "cropi.popi.pack='tree': expected true, false or prompt_once")


def test_the_gpu_recipe_checks_the_worker_precision_keys():
    """Bad dtype / checkpointing values are named; ``share_prompt`` is refused with checkpointing set on (``true``),
    since checkpointing drops the prompt's KV cache; ``auto`` turns checkpointing off with it."""
    def error(*overrides):
        with pytest.raises(ValueError) as e:  # the shipped config lacks rollouts files: always some problem
            check_cropi_config(OmegaConf.to_container(compose_config("cropi_trainer", *overrides).cropi), {})
        return str(e.value)

    msg = error("cropi.workers.dtype=fp8", "cropi.workers.gradient_checkpointing=maybe")
    assert ("cropi.workers.dtype='fp8': expected one of auto, float32, bfloat16, float16; "
            "cropi.workers.gradient_checkpointing='maybe': expected auto, true or false") in msg
    conflict = "cropi.popi.share_prompt=true with cropi.workers.gradient_checkpointing=true: share_prompt needs"
    assert conflict in error("cropi.popi.share_prompt=true", "cropi.workers.gradient_checkpointing=true")
    assert conflict in error("cropi.popi.share_prompt=true", "cropi.workers.use_gpu=false",
                             "cropi.workers.gradient_checkpointing=true")
    for ok in [("cropi.popi.share_prompt=true",),  # auto: off with share_prompt (worker_plan.resolve_checkpointing)
               ("cropi.popi.share_prompt=true", "cropi.workers.use_gpu=false"),
               ("cropi.popi.share_prompt=true", "cropi.workers.gradient_checkpointing=false"),
               ("cropi.popi.share_prompt=false",)]:
        assert "share_prompt" not in error(*ok)


CROPI_TYPOS = ("+cropi.fractoin=0.2", "+cropi.popi.micro_bach=4")
CROPI_UNKNOWN = ("error: bad CROPI config: cropi has unknown keys ['fractoin']: expected ['train_rollouts', "
                 "'val_rollouts', 'val_sets', 'num_stages', 'steps_per_stage', 'fraction',",
                 "cropi.popi has unknown keys ['micro_bach']: expected ['micro_batch_tokens', 'logit_chunk_tokens',")


@pytest.mark.parametrize("command, expected", [
    (["-m", "cropi_verl.local.main", "+grpo.lrr=1e-4"],
     ("error: bad demo config: grpo has unknown keys ['lrr']: expected ['batch_size', 'n', 'temperature', "
      "'max_new_tokens', 'lr', ",)),
    ([str(ROOT / "scripts" / "preflight.py"), *CROPI_TYPOS], CROPI_UNKNOWN),
    (["-m", "cropi_verl.trainer.main", *CROPI_TYPOS], CROPI_UNKNOWN),
], ids=["demo", "preflight", "trainer"])
def test_a_mistyped_plus_key_stops_the_entry_point_in_one_line(command, expected, tmp_path):
    """Run in ``tmp_path``: the demo's outputs would go to ``outputs/tiny_cpu`` there; nothing but hydra's log is."""
    out = subprocess.run([sys.executable, *command], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, CROPI_DRY_RUN="1"))
    assert out.returncode == 2, out.stderr[-2000:]
    (line,) = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith(expected[0]) and all(part in line for part in expected), line
    assert "preflight:" not in out.stdout and "CROPI_DRY_RUN" not in out.stdout
    assert not (tmp_path / "outputs" / "tiny_cpu" / "data").exists()


def test_unknown_keys_recurse_into_groups_the_shipped_config_has():
    known = {"a": 1, "g": {"x": 1}, "paths": None}
    assert unknown_keys({"a": 1, "g": {"x": 2, "y": 3}, "paths": {"any": "p"}, "b": 0}, known, "top.") == [
        "top has unknown keys ['b']: expected ['a', 'g', 'paths']", "top.g has unknown keys ['y']: expected ['x']"]


@pytest.mark.parametrize("rule, good, bad", [
    (Count, [1, 7], [0, -1, True, 2.0, "3", None]),
    (GroupSize, [2, 8], [1, 0, False]),
    (Fraction, [0.1, 1, 1.0], [0, 1.5, True, "0.5", float("nan"), None]),
    (OptionalPositive, [None, 0.2, 3], [0, -0.1, float("inf")]),
    (one_of(["a", "b"]), ["a"], ["c", None, 1]),
])
def test_rules_are_strict(rule, good, bad):
    assert [config_problems({"x": v}, {"x": rule}) for v in good] == [[]] * len(good)
    assert all(len(config_problems({"x": v}, {"x": rule})) == 1 for v in bad)


def test_nested_keys_missing_keys_and_the_prefix():
    values = {"a": {"b": 0}, "c": 3}
    assert config_problems(values, {"a.b": Count, "c": Count, "d.e": Count}, prefix="cropi.") == [
        "cropi.a.b=0: expected an integer >= 1", "cropi.d.e=None: expected an integer >= 1"]


def test_a_rule_as_an_argparse_type(capsys):
    ap = argparse.ArgumentParser(prog="tool")
    ap.add_argument("--k", type=arg_type(Count))
    ap.add_argument("--fraction", type=arg_type(Fraction))
    args = ap.parse_args(["--k", "3", "--fraction", "1"])
    assert (args.k, type(args.k), args.fraction) == (3, int, 1.0)
    assert ap.parse_args(["--fraction", "0.25"]).fraction == 0.25
    for argv, message in [(["--k", "0"], "argument --k: expected an integer >= 1, got '0'"),
                          (["--k", "2.5"], "argument --k: expected an integer >= 1, got '2.5'"),
                          (["--fraction", "x"], "argument --fraction: expected a number in (0, 1], got 'x'")]:
        with pytest.raises(SystemExit):
            ap.parse_args(argv)
        assert capsys.readouterr().err.strip().splitlines()[-1] == f"tool: error: {message}"
