"""Preprocessors: public math datasets -> verl-format rows with the paper's prompt template.

The template is the one the reference code uses ("qwen25-math-cot"): a system turn asking for step-by-step
reasoning and a ``\\boxed{}`` final answer, then the question as the user turn. Rewards for every source
here go through math-verify (see ``cropi_verl.rewards``).

Each dataset is a ``DatasetSpec``: where it lives on the HF hub, and how to read the question and the final
answer from one raw record. ``load_raw`` reads a local file (.jsonl/.json/.parquet) or the hub; ``raw_file``
finds a dataset's file in a local directory.

Questions are matched across datasets by their text with whitespace collapsed (``question_key``): held-out
validation prompts are drawn from a source minus every evaluated question, and removed from the training pool.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd

from cropi_verl.data.verl_format import make_record

log = logging.getLogger(__name__)

SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."


def paper_prompt(question: str) -> list[dict[str, str]]:
    """The paper's chat prompt for a question."""
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question.strip()}]


def with_paper_prompt(frame: pd.DataFrame) -> pd.DataFrame:
    """A verl-format frame with each prompt replaced by ``paper_prompt`` of its last turn (the question)."""
    return frame.assign(prompt=[paper_prompt(p[-1]["content"]) for p in frame["prompt"]])


def _field(rec: dict[str, Any], *names: str) -> Any:
    for n in names:
        if n in rec and rec[n] is not None:
            return rec[n]
    raise KeyError(f"none of the fields {names} (record has {sorted(rec)})")


def _gsm8k_answer(rec: dict[str, Any]) -> str:
    ans = str(_field(rec, "answer"))
    if "####" not in ans:
        raise KeyError("answer has no '#### <number>' line")
    return ans.split("####")[-1].strip().replace(",", "")


def _boxed_from_solution(rec: dict[str, Any]) -> str:
    from verl.utils.reward_score.math_reward import last_boxed_only_string, remove_boxed

    boxed = last_boxed_only_string(str(_field(rec, "solution")))
    if boxed is None:
        raise KeyError("solution has no \\boxed{} answer")
    return remove_boxed(boxed)


def _plain_answer(*names: str) -> Callable[[dict[str, Any]], str]:
    def read(rec: dict[str, Any]) -> str:
        ans = _field(rec, *names)
        if isinstance(ans, (list, tuple)) or hasattr(ans, "tolist"):
            ans = list(ans)
            if not ans:
                raise KeyError("empty answer list")
            ans = ans[0]
        return str(ans).strip().strip("$").strip()

    return read


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    hf_path: str
    hf_config: str | None
    hf_split: str
    question_fields: tuple[str, ...]
    answer: Callable[[dict[str, Any]], str]


SPECS: dict[str, DatasetSpec] = {
    s.name: s
    for s in [
        DatasetSpec("gsm8k", "openai/gsm8k", "main", "train", ("question",), _gsm8k_answer),
        DatasetSpec("math", "DigitalLearningGmbH/MATH-lighteval", None, "train", ("problem",), _boxed_from_solution),
        DatasetSpec(
            "deepscaler", "agentica-org/DeepScaleR-Preview-Dataset", None, "train", ("problem",), _plain_answer("answer")
        ),
        DatasetSpec("math500", "HuggingFaceH4/MATH-500", None, "test", ("problem",), _plain_answer("answer")),
        DatasetSpec(
            "aime24", "HuggingFaceH4/aime_2024", None, "train", ("problem", "Problem"), _plain_answer("answer", "Answer")
        ),
        DatasetSpec("amc23", "math-ai/amc23", None, "test", ("question", "problem"), _plain_answer("answer")),
        DatasetSpec(
            "gaokao2023en", "MARIO-Math-Reasoning/Gaokao2023-Math-En", None, "train", ("question",), _plain_answer("answer")
        ),
        DatasetSpec(
            "olympiadbench", "Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train", ("question",),
            _plain_answer("final_answer", "answer"),
        ),
    ]
}


RAW_SUFFIXES = (".jsonl", ".json", ".parquet")


def raw_file(raw_dir: str | Path, spec: DatasetSpec, split: str | None = None) -> Path:
    """``<raw_dir>/<name>.<ext>`` for the dataset's default split, else ``<raw_dir>/<name>_<split>.<ext>``."""
    stem = spec.name if split in (None, spec.hf_split) else f"{spec.name}_{split}"
    for suffix in RAW_SUFFIXES:
        if (Path(raw_dir) / f"{stem}{suffix}").is_file():
            return Path(raw_dir) / f"{stem}{suffix}"
    raise FileNotFoundError(f"{raw_dir}: no {stem}{'/'.join(RAW_SUFFIXES)} for dataset {spec.name!r} split "
                            f"{split or spec.hf_split!r}")


def question_key(text: str) -> str:
    """A question's text with runs of whitespace collapsed: how questions are matched across datasets."""
    return " ".join(str(text).split())


def _question(spec: DatasetSpec, rec: dict[str, Any]) -> str:
    return str(_field(rec, *spec.question_fields)).strip()


def frame_questions(frame: pd.DataFrame) -> set[str]:
    """The question keys of a verl-format frame (its prompts' last turn)."""
    return {question_key(p[-1]["content"]) for p in frame["prompt"]}


def without_questions(spec: DatasetSpec, raw: list[dict], questions: set[str]) -> tuple[list[dict], int]:
    """The raw records whose question key is not in ``questions`` (records without a question are kept, for
    ``convert`` to report), and how many were dropped."""
    kept = []
    for rec in raw:
        try:
            drop = question_key(_question(spec, rec)) in questions
        except KeyError:
            drop = False
        if not drop:
            kept.append(rec)
    return kept, len(raw) - len(kept)


def load_raw(spec: DatasetSpec, local_path: str | Path | None = None, split: str | None = None) -> list[dict]:
    """Raw records from a local .jsonl/.json/.parquet file, or from the HF hub (``datasets.load_dataset``)."""
    if local_path is not None:
        p = Path(local_path)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such file for dataset {spec.name!r}")
        if p.suffix == ".parquet":
            return pd.read_parquet(p).to_dict("records")
        if p.suffix == ".jsonl":
            return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
        if p.suffix == ".json":
            data = json.loads(p.read_text())
            return data if isinstance(data, list) else data["data"]
        raise ValueError(f"{p}: unsupported file type {p.suffix!r} (expected .jsonl, .json or .parquet)")
    import datasets

    ds = datasets.load_dataset(spec.hf_path, spec.hf_config, split=split or spec.hf_split)
    return list(ds)


def convert(
    spec: DatasetSpec, raw: Iterable[dict], split: str, start_index: int = 0, source: str = "<hub>"
) -> tuple[pd.DataFrame, list[str]]:
    """verl-format rows for ``raw``; records with no question or no answer are skipped and reported.

    Returns ``(frame, skipped)`` where each ``skipped`` entry is ``"<source>: record N: <reason>"``.
    """
    rows, skipped = [], []
    for i, rec in enumerate(raw):
        try:
            question = _question(spec, rec)
            answer = spec.answer(rec)
            if not question:
                raise KeyError("empty question")
            if not answer:
                raise KeyError("empty answer")
        except KeyError as e:
            skipped.append(f"{source}: record {i}: {e.args[0]}")
            continue
        rows.append(make_record(paper_prompt(question), answer, spec.name, start_index + len(rows), split))
    if skipped:
        log.warning("%s: skipped %d of %d records (first: %s)", spec.name, len(skipped), i + 1, skipped[0])
    return pd.DataFrame(rows), skipped
