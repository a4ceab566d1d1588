"""Raw dataset files made from the embedded task, each in its public dataset's own raw format, so that
``scripts/prepare_data.py --raw-dir`` reads them as it reads downloaded files (the ``DEVICE=cpu`` recipes, tests).

The embedded task's splits (``build_toy_task``, disjoint from the tiny policy's warm-up corpus) are dealt out:

| file | raw format | problems |
|---|---|---|
| ``gsm8k.jsonl`` (train) | ``question``, ``answer`` = ``<work>\\n#### <n>`` | pool ``add`` + ``sub`` |
| ``math.jsonl`` (train) | ``problem``, ``solution`` with ``\\boxed{n}``, ``level``, ``type`` | pool ``mul`` + ``max`` |
| ``deepscaler.jsonl`` | ``problem``, ``answer``, ``solution`` | pool ``rev`` |
| ``gsm8k_test.jsonl`` | as gsm8k | the first half of ``val_add`` |
| ``math_test.jsonl`` | as math | ``val_sub``, then the first half of ``val_mixed`` |
| ``math500.jsonl`` | ``problem``, ``solution``, ``answer``, ``subject``, ``level``, ``unique_id`` | the first half of ``val_mixed`` (so MATH test minus MATH500 is ``val_sub``) |
| ``aime24.jsonl`` | ``ID``, ``Problem``, ``Answer`` | the 3rd quarter of ``val_add`` |
| ``amc23.jsonl`` | ``id``, ``question``, ``answer`` | the 4th quarter of ``val_add`` |
| ``gaokao2023en.jsonl`` | ``question``, ``answer`` | the 3rd quarter of ``val_mixed`` |
| ``olympiadbench.jsonl`` | ``id``, ``question``, ``final_answer`` (a list) | the 4th quarter of ``val_mixed`` |

So the recipe's targeted sets are measured by the pool's ``add``/``sub`` prompts (``gsm8k_heldout``: GSM8K train,
``math_heldout``: ``sub``), as on the embedded task: selection matters. The same task config gives the same files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pandas as pd

from cropi_verl.data.toy_task import ToyTaskConfig, build_toy_task
from cropi_verl.utils.atomic import atomic_write_text

Record = dict  # one raw record, as the public dataset stores it


def _problems(frame: pd.DataFrame, families: tuple[str, ...] | None = None) -> list[dict]:
    """(question, answer, work, family, tier) of each row of a toy split, in order, of ``families`` only."""
    rows = []
    for prompt, truth, extra in zip(frame["prompt"], frame["reward_model"], frame["extra_info"]):
        if families is None or extra["family"] in families:
            work = extra["solution"].split(". \\boxed")[0]
            rows.append({"question": prompt[-1]["content"], "answer": truth["ground_truth"], "work": work,
                         "family": extra["family"], "tier": int(extra["tier"])})
    return rows


def _gsm8k(p: dict, i: int) -> Record:
    return {"question": p["question"], "answer": f"{p['work']}\n#### {p['answer']}"}


def _math(p: dict, i: int) -> Record:
    return {"problem": p["question"], "solution": f"{p['work']}, so the answer is $\\boxed{{{p['answer']}}}$.",
            "level": f"Level {p['tier']}", "type": p["family"]}


def _deepscaler(p: dict, i: int) -> Record:
    return {"problem": p["question"], "answer": p["answer"], "solution": p["work"]}


def _math500(p: dict, i: int) -> Record:
    return {"problem": p["question"], "solution": _math(p, i)["solution"], "answer": p["answer"],
            "subject": p["family"], "level": p["tier"], "unique_id": f"test/{p['family']}/{i}.json"}


def _aime24(p: dict, i: int) -> Record:
    return {"ID": f"2024-I-{i + 1}", "Problem": p["question"], "Answer": int(p["answer"])}


def _amc23(p: dict, i: int) -> Record:
    return {"id": i, "question": p["question"], "answer": float(p["answer"])}


def _gaokao(p: dict, i: int) -> Record:
    return {"question": p["question"], "answer": p["answer"]}


def _olympiad(p: dict, i: int) -> Record:
    return {"id": 1600 + i, "question": p["question"], "final_answer": [f"${p['answer']}$"],
            "is_multiple_answer": False}


def raw_fixture_records(task: ToyTaskConfig) -> dict[str, list[Record]]:
    """File stem -> raw records (see the module docstring)."""
    frames = build_toy_task(task)
    add, sub, mixed = (_problems(frames[s]) for s in ("val_add", "val_sub", "val_mixed"))
    half, quarter = len(add) // 2, len(add) // 4
    files: dict[str, tuple[Callable[[dict, int], Record], list[dict]]] = {
        "gsm8k": (_gsm8k, _problems(frames["train"], ("add", "sub"))),
        "math": (_math, _problems(frames["train"], ("mul", "max"))),
        "deepscaler": (_deepscaler, _problems(frames["train"], ("rev",))),
        "gsm8k_test": (_gsm8k, add[:half]),
        "math_test": (_math, sub + mixed[:half]),
        "math500": (_math500, mixed[:half]),
        "aime24": (_aime24, add[half:half + quarter]),
        "amc23": (_amc23, add[half + quarter:]),
        "gaokao2023en": (_gaokao, mixed[half:half + quarter]),
        "olympiadbench": (_olympiad, mixed[half + quarter:]),
    }
    return {stem: [make(p, i) for i, p in enumerate(problems)] for stem, (make, problems) in files.items()}


def write_raw_fixtures(out: str | Path, task: ToyTaskConfig) -> dict[str, int]:
    """Write ``<out>/<stem>.jsonl`` for every file of ``raw_fixture_records`` (each atomically); returns the row
    count per stem."""
    counts = {}
    for stem, records in raw_fixture_records(task).items():
        atomic_write_text("".join(json.dumps(r) + "\n" for r in records), Path(out) / f"{stem}.jsonl")
        counts[stem] = len(records)
    return counts
