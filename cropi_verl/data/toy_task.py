"""The embedded task: a deterministic verifiable arithmetic task with skill families and difficulty tiers.

Families: ``add``, ``sub``, ``mul``, ``max``, ``rev`` (reverse the digits); tiers 1 (easy) .. 3 (hard);
each family has a symbolic and a word-problem template. Every answer is an integer, written by the
reference solution as ``<work> = <n>. \\boxed{<n>}``.

The splits are built so that *selection matters*:

- ``train``: the pool, uniform over families x tiers. Only ``add`` and ``sub`` (2/5 of it) teach the skills
  the targeted validation sets measure; tier 1 is mostly solved and tier 3 mostly unsolved by the warm-up
  policy (zero-advantage groups), tier 2 is learnable.
- ``val_add``, ``val_sub``: the targeted validation sets (tier ``val_tier``, default 2, of one family each).
- ``val_mixed``: the untargeted held-out set (tier ``val_tier`` of every family).
- ``sft``: the warm-up corpus for the tiny policy. By default half of its ``add`` and ``sub`` answers stop after
  the work line without ``\\boxed{}`` (``sft_unboxed``), so the warm-up policy has a format habit on exactly the
  targeted skills that GRPO on those families removes and that other families' prompts do not teach. (Without it,
  GRPO does not move the tiny policy's targeted accuracy at any step budget or learning rate we tried: its errors
  are missing arithmetic facts, which RL on other operands does not supply.)

All splits are disjoint by problem (family, operands). The same ``seed`` gives byte-identical frames.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Callable, Mapping

import pandas as pd

from cropi_verl.data.preprocess import with_paper_prompt
from cropi_verl.data.verl_format import make_record

DATA_SOURCE_PREFIX = "cropi_toy"
FAMILIES = ("add", "sub", "mul", "max", "rev")
TIERS = (1, 2, 3)
TARGETED_SETS = ("val_add", "val_sub")
UNTARGETED_SETS = ("val_mixed",)

# How a split's prompts are written (``in_prompt_format``): ``toy``, the question as the one user turn (the tiny
# policy learns the boxed format in its warm-up); ``paper``, the paper's system turn first (the GPU recipes');
# ``fewshot``, for a small instruct model: a system turn asking for "The answer is <n>." and two worked examples as
# earlier turns (3-digit operands, which no split holds).
PROMPT_FORMATS = ("toy", "paper", "fewshot")
FEWSHOT_SYSTEM = "Answer in one line and end with: The answer is <number>."
FEWSHOT_EXAMPLES = (("What is 120 + 250?", "120 + 250 = 370. The answer is 370."),
                    ("Bo has 700 pens and gives away 400. How many pens are left?", "700 - 400 = 300. The answer is 300."))

_NAMES = ("Ann", "Bo", "Cy", "Di", "Ed", "Flo")
_THINGS = ("apples", "coins", "cards", "pens")


@dataclass(frozen=True)
class Problem:
    family: str
    tier: int
    operands: tuple[int, ...]
    question: str
    answer: int
    solution: str

    @property
    def key(self) -> tuple:
        return (self.family, self.operands)


# digits of each operand, per family and tier
_DIGITS: dict[str, dict[int, tuple[int, ...]]] = {
    "add": {1: (1, 1), 2: (2, 1), 3: (2, 2)},
    "sub": {1: (1, 1), 2: (2, 1), 3: (2, 2)},
    "mul": {1: (1, 1), 2: (2, 1), 3: (2, 2)},
    "max": {1: (1, 1), 2: (2, 2), 3: (2, 2, 2)},
    "rev": {1: (2,), 2: (3,), 3: (4,)},
}


def _operands(rng: random.Random, family: str, tier: int) -> tuple[int, ...]:
    return tuple(rng.randint(10 ** (n - 1) if n > 1 else 0, 10**n - 1) for n in _DIGITS[family][tier])


def _add(rng: random.Random, tier: int, word: bool) -> Problem:
    a, b = _operands(rng, "add", tier)
    name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
    q = f"{name} has {a} {thing} and gets {b} more. How many {thing} now?" if word else f"What is {a} + {b}?"
    return Problem("add", tier, (a, b), q, a + b, f"{a} + {b} = {a + b}")


def _sub(rng: random.Random, tier: int, word: bool) -> Problem:
    a, b = sorted(_operands(rng, "sub", tier), reverse=True)
    name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
    q = f"{name} has {a} {thing} and gives away {b}. How many {thing} are left?" if word else f"What is {a} - {b}?"
    return Problem("sub", tier, (a, b), q, a - b, f"{a} - {b} = {a - b}")


def _mul(rng: random.Random, tier: int, word: bool) -> Problem:
    a, b = _operands(rng, "mul", tier)
    thing = rng.choice(_THINGS)
    q = f"There are {a} boxes with {b} {thing} each. How many {thing}?" if word else f"What is {a} * {b}?"
    return Problem("mul", tier, (a, b), q, a * b, f"{a} * {b} = {a * b}")


def _max(rng: random.Random, tier: int, word: bool) -> Problem:
    xs = _operands(rng, "max", tier)
    listed = ", ".join(map(str, xs))
    q = f"Which number is the largest: {listed}?" if word else f"What is max({listed})?"
    return Problem("max", tier, xs, q, max(xs), f"max({listed}) = {max(xs)}")


def _rev(rng: random.Random, tier: int, word: bool) -> Problem:
    (a,) = _operands(rng, "rev", tier)
    while a % 10 == 0:
        (a,) = _operands(rng, "rev", tier)
    r = int(str(a)[::-1])
    q = f"Write the digits of {a} in reverse order." if word else f"What is reverse({a})?"
    return Problem("rev", tier, (a,), q, r, f"reverse({a}) = {r}")


GENERATORS: dict[str, Callable[[random.Random, int, bool], Problem]] = {
    "add": _add,
    "sub": _sub,
    "mul": _mul,
    "max": _max,
    "rev": _rev,
}


def solution_text(p: Problem) -> str:
    """The reference response: the work line, then the boxed answer."""
    return f"{p.solution}. \\boxed{{{p.answer}}}"


def unboxed_text(p: Problem) -> str:
    """The reference response with the format habit the reward rejects: the work line, no ``\\boxed`` answer."""
    return f"{p.solution}."


def in_prompt_format(frame: pd.DataFrame, fmt: str) -> pd.DataFrame:
    """A split of this task with its prompts written in the format ``fmt`` (``PROMPT_FORMATS``)."""
    if fmt not in PROMPT_FORMATS:
        raise ValueError(f"prompt format {fmt!r}: expected one of {', '.join(PROMPT_FORMATS)}")
    if fmt == "paper":
        return with_paper_prompt(frame)
    if fmt == "fewshot":
        shots = [{"role": role, "content": text} for q, a in FEWSHOT_EXAMPLES
                 for role, text in (("user", q), ("assistant", a))]
        return frame.assign(prompt=[[{"role": "system", "content": FEWSHOT_SYSTEM}, *shots, p[-1]]
                                    for p in frame["prompt"]])
    return frame


def _stream_rng(seed: int, split: str, family: str, tier: int) -> random.Random:
    h = hashlib.sha256(f"{seed}/{split}/{family}/{tier}".encode()).digest()
    return random.Random(int.from_bytes(h[:8], "little"))


def generate_problems(
    n: int,
    split: str,
    seed: int,
    families: tuple[str, ...] = FAMILIES,
    tiers: tuple[int, ...] = TIERS,
    exclude: set[tuple] | None = None,
    unique: bool = True,
    weights: dict[str, int] | None = None,
) -> list[Problem]:
    """``n`` problems, round-robin over families x tiers, none of whose keys is in ``exclude``;
    with ``unique`` they are also pairwise distinct (without it, repeats are allowed: the warm-up corpus).

    Each (family, tier) cell draws from its own seeded stream, so a cell's problems do not depend on
    ``n`` or on the other cells. ``weights[family]`` (default 1) repeats a family's cells in the round-robin.
    """
    for f in families:
        if f not in GENERATORS:
            raise ValueError(f"unknown family {f!r}; expected one of {FAMILIES}")
    excluded = set(exclude or ())
    cells = [(f, t) for f in families for t in tiers for _ in range((weights or {}).get(f, 1))]
    rngs = {c: _stream_rng(seed, split, *c) for c in set(cells)}
    out: list[Problem] = []
    drawn: set[tuple] = set()
    stalls = 0
    while len(out) < n:
        f, t = cells[len(out) % len(cells)]
        rng = rngs[(f, t)]
        p = GENERATORS[f](rng, t, rng.random() < 0.5)
        if p.key in excluded or (unique and p.key in drawn):
            stalls += 1
            if stalls > 10_000:
                raise ValueError(f"cannot draw {n} distinct problems for split {split!r}: cell {f}/tier {t} is exhausted")
            continue
        drawn.add(p.key)
        out.append(p)
    return out


def to_records(problems: list[Problem], split: str, start_index: int = 0,
               solutions: list[str] | None = None) -> pd.DataFrame:
    """verl-format rows (one user turn, no system prompt: the tiny policy learns the boxed format in its
    warm-up); ``extra_info`` carries family, tier and the reference solution (``solutions[i]``, default
    ``solution_text``)."""
    rows = [
        make_record(
            [{"role": "user", "content": p.question}],
            ground_truth=str(p.answer),
            data_source=f"{DATA_SOURCE_PREFIX}/{p.family}",
            index=start_index + i,
            split=split,
            family=p.family,
            tier=p.tier,
            solution=solutions[i] if solutions else solution_text(p),
        )
        for i, p in enumerate(problems)
    ]
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class ToyTaskConfig:
    seed: int = 0
    n_train: int = 600
    n_val: int = 64
    n_sft: int = 6000
    # the warm-up corpus over-weights the arithmetic families, which a tiny model learns slowest
    sft_weights: tuple[tuple[str, int], ...] = (("add", 3), ("sub", 3), ("mul", 2))
    # (family, rate): that share of the family's warm-up solutions stops after the work line, without the boxed
    # answer the reward needs -- a format habit of the warm-up policy that GRPO on that family removes. A mapping
    # is accepted; zero rates are dropped, so equal settings give equal configs (and the same cached policy).
    sft_unboxed: tuple[tuple[str, float], ...] = (("add", 0.5), ("sub", 0.5))
    val_tier: int = 2  # the tier of every validation set (the learnable one for the tiny policy; 1 for SmolLM2-135M)

    def __post_init__(self) -> None:
        pairs = self.sft_unboxed.items() if isinstance(self.sft_unboxed, Mapping) else (self.sft_unboxed or ())
        pairs = [(str(f), float(r)) for f, r in pairs]
        bad = [f"{f}={r}" for f, r in pairs if f not in GENERATORS or not 0.0 <= r <= 1.0]
        if bad:
            raise ValueError(f"task.sft_unboxed: {', '.join(bad)}: expected a family of {FAMILIES} and a rate in [0, 1]")
        object.__setattr__(self, "sft_unboxed", tuple(sorted((f, r) for f, r in pairs if r > 0)))
        if self.val_tier not in TIERS:
            raise ValueError(f"task.val_tier={self.val_tier}: expected one of {TIERS}")


def _sft_solutions(problems: list[Problem], cfg: ToyTaskConfig) -> list[str]:
    """Warm-up responses: ``unboxed_text`` at the family's ``sft_unboxed`` rate (one seeded draw per problem)."""
    rng, rates = _stream_rng(cfg.seed, "sft_unboxed", "sft", 0), dict(cfg.sft_unboxed)
    return [unboxed_text(p) if rng.random() < rates.get(p.family, 0.0) else solution_text(p) for p in problems]


def build_toy_task(cfg: ToyTaskConfig) -> dict[str, pd.DataFrame]:
    """All splits of the embedded task, keyed by split name; validation splits are drawn first."""
    used: set[tuple] = set()
    frames: dict[str, pd.DataFrame] = {}
    plan = [
        ("val_add", cfg.n_val, ("add",), (cfg.val_tier,)),
        ("val_sub", cfg.n_val, ("sub",), (cfg.val_tier,)),
        ("val_mixed", cfg.n_val, FAMILIES, (cfg.val_tier,)),
        ("train", cfg.n_train, FAMILIES, TIERS),
        ("sft", cfg.n_sft, FAMILIES, TIERS),
    ]
    offset = 0
    for split, n, fams, tiers in plan:
        sft = split == "sft"
        probs = generate_problems(
            n, split, cfg.seed, fams, tiers, exclude=used, unique=not sft, weights=dict(cfg.sft_weights) if sft else None
        )
        used.update(p.key for p in probs)
        frames[split] = to_records(probs, split, start_index=offset, solutions=_sft_solutions(probs, cfg) if sft else None)
        offset += n
    return frames
