"""Choosing a model (``models.presets``): what a folder lacks, in one line naming it; a preset before and after its
fetch; hub ids passed through. The fetch itself (pip, the GGUF conversion) runs in the slow real-model tests; its bad
inputs (a GGUF of another hash) in ``test_bad_inputs``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from cropi_verl.models.presets import FETCH_INFO, ModelFolderError, model_source, resolve_model
from policy_helpers import saved_random_policy
from scripts_helpers import ROOT


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return saved_random_policy(tmp_path_factory.mktemp("model") / "policy")


def _without(folder, tmp_path, *names, template=True):
    """A copy of ``folder`` without the files ``names`` (and without its chat template unless ``template``)."""
    out = tmp_path / "copy"
    shutil.copytree(folder, out, ignore=shutil.ignore_patterns(*names))
    if not template:
        config = json.loads((out / "tokenizer_config.json").read_text())
        config.pop("chat_template", None)
        (out / "tokenizer_config.json").write_text(json.dumps(config))
        (out / "chat_template.jinja").unlink(missing_ok=True)
    return out


@pytest.mark.parametrize("names, template, lacks", [
    (("config.json",), True, "no config.json"),
    (("tokenizer.json", "tokenizer_config.json"), True, "no tokenizer (expected tokenizer.json or "
                                                         "tokenizer_config.json)"),
    ((), False, "no chat template (the prompts are chat turns: expected chat_template.jinja or a chat_template in "
                "tokenizer_config.json)"),
])
def test_a_folder_that_lacks_a_part_is_named_with_it(folder, tmp_path, names, template, lacks):
    bad = _without(folder, tmp_path, *names, template=template)
    with pytest.raises(ModelFolderError) as e:
        model_source(str(bad))
    assert str(e.value) == f"model {bad}: {lacks}; expected an HF model folder"


def test_a_good_folder_a_hub_id_and_a_missing_path(folder, tmp_path):
    assert model_source(str(folder)) == str(folder) and resolve_model(folder) == folder
    assert model_source("Qwen/Qwen2.5-1.5B-Instruct") == "Qwen/Qwen2.5-1.5B-Instruct"  # a hub id: as given
    with pytest.raises(ModelFolderError, match=r"no such folder; expected an HF model folder or a preset name "
                                               r"\(smollm2-135m\)"):
        model_source(str(tmp_path / "nowhere"))


def test_a_preset_is_its_fetched_folder_and_unfetched_says_how(folder, tmp_path):
    with pytest.raises(ModelFolderError, match=r"model preset 'smollm2-135m' is not fetched into .*: run `python "
                                               r"scripts/fetch_model.py smollm2-135m`"):
        model_source("smollm2-135m", tmp_path)
    shutil.copytree(folder, tmp_path / "smollm2-135m")
    (tmp_path / "smollm2-135m" / FETCH_INFO).write_text("{}")
    assert model_source("smollm2-135m", tmp_path) == str(tmp_path / "smollm2-135m")


def test_the_recipes_resolver_prints_the_folder_or_one_line(folder, tmp_path):
    """``python -m cropi_verl.models.presets SPEC``, as the recipes call it on MODEL."""
    run = [sys.executable, "-m", "cropi_verl.models.presets"]
    good = subprocess.run([*run, str(folder)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    bad = subprocess.run([*run, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert good.returncode == 0 and good.stdout.strip() == str(folder)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        f"error: model {tmp_path}: no config.json; expected an HF model folder  "
        "(CROPI_DEBUG=1 shows the traceback)"]
