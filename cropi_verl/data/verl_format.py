"""verl-format prompt parquet: read, write and validate.

One row per prompt, the columns verl's ``RLHFDataset`` reads:

- ``prompt``: chat list ``[{"role": ..., "content": ...}, ...]``
- ``data_source``: str, routes the reward (see ``cropi_verl.rewards``)
- ``ability``: str
- ``reward_model``: ``{"style": "rule", "ground_truth": str}``
- ``extra_info``: ``{"index": int, "split": str, ...}``; ``index`` is the prompt's row id, unique per file.
"""

from __future__ import annotations

import numbers
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import pyarrow as pa

from cropi_verl.utils.atomic import atomic_write_parquet

REQUIRED_COLUMNS = ("prompt", "data_source", "ability", "reward_model", "extra_info")


class DataValidationError(ValueError):
    """Raised with one line per bad row: ``file:row N: key: reason``."""


@dataclass(frozen=True)
class RowProblem:
    path: str
    row: int | None
    key: str
    reason: str

    def __str__(self) -> str:
        where = f"row {self.row}" if self.row is not None else "file"
        return f"{self.path}: {where}: {self.key}: {self.reason}"


def make_record(
    messages: list[dict[str, str]],
    ground_truth: str,
    data_source: str,
    index: int,
    split: str,
    ability: str = "math",
    **extra: Any,
) -> dict[str, Any]:
    """One verl-format row."""
    return {
        "data_source": data_source,
        "prompt": messages,
        "ability": ability,
        "reward_model": {"style": "rule", "ground_truth": str(ground_truth)},
        "extra_info": {"index": int(index), "split": split, **extra},
    }


def write_verl_parquet(records: Iterable[dict[str, Any]] | pd.DataFrame, path: str | Path) -> Path:
    """Write rows atomically (temp file + rename). Returns the path."""
    df = records if isinstance(records, pd.DataFrame) else pd.DataFrame(list(records))
    return atomic_write_parquet(df, Path(path))


def _problems_in_row(path: str, row: int, rec: dict[str, Any]) -> list[RowProblem]:
    out: list[RowProblem] = []
    prompt = rec.get("prompt")
    if prompt is None or len(prompt) == 0:
        out.append(RowProblem(path, row, "prompt", "empty prompt (expected a non-empty chat list)"))
    else:
        for m in prompt:
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                out.append(RowProblem(path, row, "prompt", f"message {m!r} is not a {{role, content}} dict"))
                break
        else:
            if not any(str(m["content"]).strip() for m in prompt if m["role"] == "user"):
                out.append(RowProblem(path, row, "prompt", "no non-empty user message"))
    if not isinstance(rec.get("data_source"), str) or not rec["data_source"]:
        out.append(RowProblem(path, row, "data_source", f"expected a non-empty string, got {rec.get('data_source')!r}"))
    rm = rec.get("reward_model")
    gt = rm.get("ground_truth") if isinstance(rm, dict) else None
    if gt is None or (isinstance(gt, str) and not gt.strip()):
        out.append(RowProblem(path, row, "reward_model.ground_truth", "missing ground truth"))
    ei = rec.get("extra_info")
    idx = ei.get("index") if isinstance(ei, dict) else None
    if not isinstance(idx, numbers.Integral) or isinstance(idx, bool):
        out.append(RowProblem(path, row, "extra_info.index", f"expected an integer row id, got {idx!r}"))
    return out


def validate_verl_frame(df: pd.DataFrame, path: str = "<frame>") -> list[RowProblem]:
    """Every problem in ``df``: missing columns, empty prompts, missing ground truth, bad or duplicate ids."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        return [RowProblem(path, None, c, "missing column") for c in missing]
    problems: list[RowProblem] = []
    ids: list[tuple[int, int]] = []
    for row, rec in enumerate(df.to_dict("records")):
        rec["prompt"] = _as_list(rec["prompt"])
        row_problems = _problems_in_row(path, row, rec)
        problems += row_problems
        if not any(p.key == "extra_info.index" for p in row_problems):
            ids.append((row, int(rec["extra_info"]["index"])))
    counts = Counter(i for _, i in ids)
    for row, i in ids:
        if counts[i] > 1:
            problems.append(RowProblem(path, row, "extra_info.index", f"duplicate id {i} ({counts[i]} rows)"))
    return problems


def _as_list(x: Any) -> list:
    return [] if x is None else list(x)


def read_parquet(path: Path, missing: str) -> pd.DataFrame:
    """The parquet file ``path``; ``FileNotFoundError`` ``<path>: <missing>`` when there is none, and one
    ``DataValidationError`` naming it when pyarrow cannot read it (truncated, corrupt, not parquet)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {missing}")
    try:
        return pd.read_parquet(path)
    except (pa.ArrowException, OSError) as e:  # ArrowInvalid for a bad footer, OSError for bad metadata
        reason = str(e).removeprefix(f"Could not open Parquet input source '{path}': ")
        raise DataValidationError(f"{path}: not a readable parquet file (truncated or corrupt?): {reason}") from None


def read_verl_parquet(path: str | Path, validate: bool = True) -> pd.DataFrame:
    """Read a verl-format parquet (``read_parquet``); with ``validate`` raise ``DataValidationError`` listing every
    bad row."""
    path = Path(path)
    df = read_parquet(path, "no such prompts parquet")
    if validate:
        problems = validate_verl_frame(df, str(path))
        if problems:
            raise DataValidationError(
                f"{len(problems)} problem(s) in {path}:\n" + "\n".join(str(p) for p in problems)
            )
    return df


def row_ids(df: pd.DataFrame) -> list[int]:
    """The ``extra_info.index`` of each row, in file order."""
    return [int(e["index"]) for e in df["extra_info"]]


def user_text(prompt: Iterable[dict[str, str]]) -> str:
    """The concatenated user content of a chat prompt."""
    return "\n".join(str(m["content"]) for m in prompt if m["role"] == "user")
