"""Rules for config values, checked with pydantic before any work starts.

A rule is a pydantic-annotated type whose ``description`` says what is expected. ``config_problems`` validates each
dotted key of a nested mapping against its rule (``pydantic.TypeAdapter``, strict: a bool is not a number, a string
is not an integer) and turns every failure into one problem ``<key>=<value>: expected <description>``.
``arg_type`` makes the same rule an argparse ``type=``, so a script refuses ``--k 0`` as its own usage error.
``unknown_keys`` refuses keys the shipped config (``configs/<name>.yaml``, ``shipped_keys``) does not define, such
as a mistyped ``+grpo.lrr=1e-4`` override that would otherwise be carried along and never read.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Mapping, Sequence

from omegaconf import OmegaConf
from pydantic import Field, TypeAdapter, ValidationError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"

Count = Annotated[int, Field(strict=True, ge=1, description="an integer >= 1")]
GroupSize = Annotated[int, Field(strict=True, ge=2, description="an integer >= 2 (a group advantage needs 2 or more "
                                                                "responses per prompt)")]
NonNegativeInt = Annotated[int, Field(strict=True, ge=0, description="an integer >= 0")]
Fraction = Annotated[float, Field(strict=True, gt=0, le=1, allow_inf_nan=False, description="a number in (0, 1]")]
Positive = Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False, description="a number > 0")]
NonNegative = Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False, description="a number >= 0")]
Flag = Annotated[bool, Field(strict=True, description="true or false")]
PackMode = Annotated[Literal["prompt_once"] | Flag, Field(description="true, false or prompt_once")]
Rescore = Annotated[Literal["candidates"] | Flag, Field(description="true, false or candidates")]
AtLeastOne = Annotated[float, Field(strict=True, ge=1, allow_inf_nan=False, description="a number >= 1")]
ShareOf = Annotated[float, Field(strict=True, ge=0, le=1, allow_inf_nan=False, description="a number in [0, 1]")]
OptionalPositive = Annotated[Positive | None, Field(description="null or a number > 0")]
OptionalCount = Annotated[Count | None, Field(description="null or an integer >= 1")]


def one_of(choices: Sequence) -> Any:
    """The rule: one of ``choices``."""
    return Annotated[Literal[tuple(choices)], Field(description=f"one of {', '.join(map(str, choices))}")]


def list_of(choices: Sequence[str], non_empty: bool = False) -> Any:
    """The rule: a list of items from ``choices`` (at least one with ``non_empty``)."""
    what = f"a {'non-empty ' if non_empty else ''}list of {', '.join(choices)}"
    return Annotated[list[Literal[tuple(choices)]], Field(min_length=int(non_empty), description=what)]


def _lookup(values: Mapping[str, Any], key: str) -> Any:
    node: Any = values
    for part in key.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def config_problems(values: Mapping[str, Any], rules: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``<prefix><key>=<value>: expected ...`` for every dotted ``key`` of ``rules`` whose value in ``values``
    (nested mappings; a missing key is None) breaks its rule, in the order of ``rules``."""
    out = []
    for key, rule in rules.items():
        value = _lookup(values, key)
        adapter = TypeAdapter(rule)
        try:
            adapter.validate_python(value)
        except ValidationError:
            out.append(f"{prefix}{key}={value!r}: expected {adapter.json_schema()['description']}")
    return out


def shipped_keys(name: str) -> dict[str, Any]:
    """``configs/<name>.yaml`` as a nested dict, unresolved, without hydra's ``defaults`` and ``hydra`` keys."""
    tree = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / f"{name}.yaml"))
    return {k: v for k, v in tree.items() if k not in ("defaults", "hydra")}


def unknown_keys(values: Mapping[str, Any], known: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``<group> has unknown keys [...]: expected [...]`` for each group of ``values`` (nested mappings) holding keys
    that ``known`` lacks. A key whose ``known`` value is not a mapping (a number, null, ...) is a leaf: whatever it
    holds (e.g. a ``NAME: PATH`` map) is not checked here."""
    out = []
    unknown = sorted(set(values) - set(known))
    if unknown:
        out.append(f"{prefix.rstrip('.') or 'the config'} has unknown keys {unknown}: expected {list(known)}")
    for key, value in values.items():
        if isinstance(value, Mapping) and isinstance(known.get(key), Mapping):
            out += unknown_keys(value, known[key], f"{prefix}{key}.")
    return out


def arg_type(rule: Any) -> Callable[[str], Any]:
    """An argparse ``type=`` for ``rule``: the text as an int (when it is one) or a float, then checked; argparse
    reports a failure as ``argument --x: expected <description>, got '<text>'``."""
    adapter = TypeAdapter(rule)

    def convert(text: str) -> Any:
        try:
            return adapter.validate_python(_number(text))
        except ValueError:  # a ValidationError, or text that is no number
            raise argparse.ArgumentTypeError(f"expected {adapter.json_schema()['description']}, got {text!r}") from None

    return convert


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)
