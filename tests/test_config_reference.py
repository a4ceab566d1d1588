"""scripts/config_reference.py: the README's configuration reference is generated from the config files' comments
and is current."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from cropi_verl.utils.config_rules import shipped_keys

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def load_script():
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "scripts" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


ref = load_script()


def dotted(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in tree.items():
        out += dotted(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [f"{prefix}{k}"]
    return out


def test_the_readme_section_is_current(capsys):
    assert ref.main(["--check", str(README)]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("name", ["cropi_trainer", "tiny_cpu"])
def test_every_key_has_a_row_with_a_meaning(name):
    rows = {r.key: r for r in ref.parse(ROOT / "configs" / f"{name}.yaml")[1]}
    keys = [k for k in dotted(shipped_keys(name)) if not k.startswith("task.sft_unboxed.")]  # one flow-mapping row
    assert [k for k in keys if k not in rows] == []
    assert [k for k in keys if not rows[k].comment] == []
    section = README.read_text().split(ref.BEGIN)[1].split(ref.END)[0]
    owned = ref.FILES[f"configs/{name}.yaml"]
    ours = [k for k in keys if owned is None or k.startswith(owned + ".")]
    assert ours and all(f"| `{k}` |" in section for k in ours)
    assert all(f"`{k}={rows[k].default}`" in section for k in keys if k not in ours)  # verl's, with their values


def test_continuation_lines_are_joined_and_keys_nest(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "# the header\n"
        "defaults:\n"
        "  - preset: default   # a group\n"
        "  - _self_\n"
        "top: 1            # first line\n"
        "                  #   second line\n"
        "group:            # the group\n"
        "  leaf: 'a # b'   # quoted hash | pipe\n"
        "  deep:\n"
        "    x: [1, 2]     # a list, and a comment that goes on\n"
        "                  # under the file's comment column\n"
        "  bare: null\n"
        "# a comment on its own\n"
        "hydra:\n"
        "  help:\n"
        "    template: |-\n"
        "      key: not a key\n")
    header, rows = ref.parse(cfg)
    assert header == "the header"
    assert [(r.key, r.default, r.comment) for r in rows] == [
        ("preset", "default", "a group"),
        ("top", "1", "first line second line"),
        ("group", "", "the group"),
        ("group.leaf", "'a # b'", "quoted hash | pipe"),
        ("group.deep.x", "[1, 2]", "a list, and a comment that goes on under the file's comment column"),
        ("group.bare", "null", ""),
    ]
    assert ref.cell("a | b <NAME> `<x>`") == "a \\| b &lt;NAME> `<x>`"


def test_check_and_write(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{ref.BEGIN}\nstale\n{ref.END}\n\nmore\n")
    assert ref.main(["--check", str(readme)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert ref.main(["--write", str(readme)]) == 0
    assert ref.main(["--check", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# title\n\n") and text.endswith(f"{ref.END}\n\nmore\n")
    assert "| `cropi.fraction` | `0.1` |" in text
    readme.write_text("no markers\n")
    assert ref.main(["--check", str(readme)]) == 2
    assert "error:" in capsys.readouterr().err
