#!/usr/bin/env python
"""Generate the README's configuration reference from the config files' own comments.

Every key of the groups we own (``cropi:`` in configs/cropi_trainer.yaml, all of configs/tiny_cpu.yaml but hydra's
``hydra:`` node; a ``defaults`` entry ``- group: option  # comment`` is listed as the config group ``group``) becomes
a table row: the dotted key, its default as written in the file, and its trailing ``# comment``. The verl keys a
file sets are listed after its table, with their values (their comments stay in the file). A comment continues on
the comment-only lines right below it (no blank line between) whose ``#`` stands right of the key's own
indentation, aligned under the comment or under the file's comment column; those lines are joined with spaces. A
group key (``task:``) is parsed when it has a comment, and not listed. The keys found are checked against the file
as OmegaConf reads it.

The README's section lies between the lines ``<!-- config-reference:begin -->`` and
``<!-- config-reference:end -->``; tests/test_config_reference.py checks that it is current.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from cropi_verl.utils.cli import HelpFormatter

ROOT = Path(__file__).resolve().parents[1]
FILES = {"configs/cropi_trainer.yaml": "cropi", "configs/tiny_cpu.yaml": None}  # file -> the group we own (None: all)
BEGIN, END = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w-]*):(?P<rest>.*)$")
DEFAULTS_ENTRY = re.compile(r"^ *- (?P<key>[\w/]+): *(?P<rest>.*)$")
SKIPPED = ("hydra",)


@dataclass
class Row:
    key: str
    default: str  # as written; "" for a group
    comment: str
    indent: int  # the key's indentation


def split_comment(text: str) -> tuple[str, str, int]:
    """(value, comment, offset of '#' in text or -1): a '#' starts a comment outside quotes, after a blank."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[:i].strip(), text[i + 1:].strip(), i
    return text.strip(), "", -1


def parse(path: Path) -> tuple[str, list[Row]]:
    """(the file's header comment, its rows in file order)."""
    header: list[str] = []
    rows: list[Row] = []
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing mappings
    last: Row | None = None  # the row a comment-only line may continue
    skipping = in_defaults = False
    seen_key = False
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped:
            last = None
            continue
        if skipping and line.startswith(" "):
            continue
        if stripped.startswith("#"):
            column = len(line) - len(line.lstrip())
            if last is not None and last.comment and column > last.indent:
                last.comment = f"{last.comment} {stripped.lstrip('#').strip()}"
            elif not seen_key:
                header.append(stripped.lstrip("#").strip())
            else:
                last = None
            continue
        last = None
        m = KEY.match(line)
        if in_defaults and line.startswith((" ", "-")):
            d = DEFAULTS_ENTRY.match(line)
            if d:
                value, comment, _ = split_comment(d["rest"])
                last = Row(d["key"], value, comment, len(line) - len(line.lstrip()))
                rows.append(last)
            continue
        if not m:
            raise ValueError(f"{path}: cannot read the line {line!r}")
        seen_key = True
        indent = len(m["indent"])
        skipping = in_defaults = False
        if indent == 0 and m["key"] in SKIPPED:
            skipping = True
            continue
        if indent == 0 and m["key"] == "defaults":
            in_defaults = True
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([k for _, k in stack] + [m["key"]])
        value, comment, _ = split_comment(m["rest"])
        row = Row(dotted, value, comment, indent)
        if value:
            rows.append(row)
        else:
            stack.append((indent, m["key"]))
            if comment:
                rows.append(row)
        last = row
    check_keys(path, rows)
    return " ".join(header), rows


def _leaves(node: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in node.items():
        if isinstance(v, dict) and v:
            out += _leaves(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}")
    return out


def _lookup(tree: dict, key: str):
    node = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


_ABSENT = object()


def _tree(path: Path) -> dict:
    """The file as OmegaConf reads it, unresolved, as plain containers."""
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def _defaults_groups(tree: dict) -> set[str]:
    return {k for e in tree.get("defaults") or [] if isinstance(e, dict) for k in e}


def check_keys(path: Path, rows: list[Row]) -> None:
    """Every leaf OmegaConf reads is a row or lies under one (a flow mapping such as ``{add: 0.5}`` is one row),
    and every row is a key OmegaConf reads: the line reader missed nothing and invented nothing."""
    tree = _tree(path)
    choices = _defaults_groups(tree)
    leaves = [k for k in _leaves(tree) if k.split(".")[0] not in SKIPPED + ("defaults",)]
    with_value = {r.key for r in rows if r.default and r.key not in choices}
    groups = {r.key for r in rows if not r.default}
    missed = [k for k in leaves if not any(k == r or k.startswith(r + ".") for r in with_value)]
    extra = [k for k in with_value if _lookup(tree, k) is _ABSENT]
    extra += [k for k in groups if not isinstance(_lookup(tree, k), dict)]
    extra += [k for k in (r.key for r in rows if r.key in choices) if k not in choices]
    if missed or extra:
        raise ValueError(f"{path}: the line reader and OmegaConf disagree: missed {missed}, extra {extra}")


def cell(text: str) -> str:
    """Markdown table cell text: ``|`` escaped; ``<`` outside code spans as ``&lt;`` (else ``<NAME>`` is a tag)."""
    parts = text.replace("|", "\\|").split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;") for i, p in enumerate(parts))


def table(path: str, owned: str | None) -> str:
    """The file's header, a row per key of ``owned`` (None: every key), then the other keys with their values."""
    header, rows = parse(ROOT / path)
    choices = _defaults_groups(_tree(ROOT / path))
    ours = [r for r in rows if r.default and (owned is None or r.key.startswith(owned + "."))]
    lines = [f"**`{path}`**" + (f": {header}" if header else ""), "", "| key | default | meaning |", "|---|---|---|"]
    for r in ours:
        lines.append(f"| `{r.key}` | `{cell(r.default)}`{' (config group)' if r.key in choices else ''} | "
                     f"{cell(r.comment)} |")
    others = [r for r in rows if r.default and r not in ours]
    if others:
        lines += ["", "verl keys it sets: " + ", ".join(f"`{r.key}={r.default}`" for r in others) + "."]
    return "\n".join(lines)


def reference() -> str:
    return "\n\n".join(table(f, owned) for f, owned in FILES.items())


def section(readme: str) -> tuple[int, int]:
    """The character span between the markers' lines (exclusive of the markers)."""
    if readme.count(BEGIN) != 1 or readme.count(END) != 1 or readme.index(BEGIN) > readme.index(END):
        raise ValueError(f"expected one {BEGIN} line followed by one {END} line")
    return readme.index(BEGIN) + len(BEGIN), readme.index(END)


def generated_block() -> str:
    return "\n" + reference() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=HelpFormatter,
        epilog="examples:\n  python scripts/config_reference.py                    # print the tables\n"
               "  python scripts/config_reference.py --check README.md   # exit 1 when README.md's section is stale\n"
               "  python scripts/config_reference.py --write README.md   # regenerate it")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--check", type=Path, metavar="README", help="exit 1 if README's generated section differs")
    mode.add_argument("--write", type=Path, metavar="README", help="rewrite README's generated section")
    args = ap.parse_args(argv)
    if args.check is None and args.write is None:
        print(reference())
        return 0
    path = args.check or args.write
    try:
        text = path.read_text()
        start, end = section(text)
    except (OSError, ValueError) as e:
        print(f"error: {path}: {e}", file=sys.stderr)
        return 2
    new = text[:start] + generated_block() + text[end:]
    if args.write:
        if new != text:
            path.write_text(new)
        print(f"{path}: configuration reference {'rewritten' if new != text else 'already current'}")
        return 0
    if new != text:
        print(f"{path}: the configuration reference is out of date: run python scripts/config_reference.py "
              f"--write {path}", file=sys.stderr)
        return 1
    print(f"{path}: configuration reference is current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
