"""Selection strategies behind one interface: ``select(strategy, pool, fraction, seed)``.

The pool holds every training prompt id, optionally their influence scores per validation set (NaN where a
prompt was not scored, e.g. zero advantage) and their offline pass rates. ``n = round(fraction * N_pool)``.

- ``cropi``:         reciprocal-rank merge: rank_v(s) = 1-based rank of s by score on set v (scored prompts
                     only); key(s) = sum_v 1 / rank_v(s); the top n by key (the paper's ``inf_valid_uniform``).
- ``influence_max``: key(s) = max_v score_v(s); the top n (the paper's ``inf``).
- ``random``:        n prompts uniformly at random from the whole pool.
- ``pass_rate``:     mid-difficulty filter: n prompts uniformly at random among those with 0 < p(s) < 1 (beta
                     neither always nor never solved them); a shortfall when fewer qualify. (Ranking by
                     -|p - 0.5| would be the same order as ``learnability``, since p(1-p) = 1/4 - (p - 1/2)^2.)
- ``learnability``:  key(s) = p(s)(1 - p(s)); the top n.
- ``full``:          every prompt.

Ties (equal keys) are broken by a seeded random permutation, so the same seed gives the same selection.
Influence strategies only choose among scored prompts; when fewer than n are scored, all of them are
selected and ``SelectionResult.shortfall`` says how many are missing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)

STRATEGIES = ("cropi", "influence_max", "random", "pass_rate", "learnability", "full")


@dataclass
class SelectionPool:
    prompt_ids: np.ndarray  # [N] int64
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # set name -> [N] float, NaN = not scored
    pass_rate: np.ndarray | None = None  # [N] in [0, 1]


@dataclass
class SelectionResult:
    prompt_ids: np.ndarray  # selected ids, best first
    keys: np.ndarray  # the strategy's key for each selected id (same order)
    n_target: int
    shortfall: int = 0


def check_fraction(fraction: float) -> None:
    """A clear error for a select fraction outside (0, 1]."""
    if not 0 < fraction <= 1:
        raise ValueError(f"select fraction must be in (0, 1], got {fraction}")


def n_to_select(fraction: float, n_pool: int) -> int:
    """round(fraction * N); a clear error for a fraction outside (0, 1] or one that selects nothing."""
    check_fraction(fraction)
    n = int(round(fraction * n_pool))
    if n == 0:
        raise ValueError(f"select fraction {fraction} of a pool of {n_pool} prompts rounds to 0 prompts")
    return n


def _ranks_desc(x: np.ndarray, tiebreak: np.ndarray) -> np.ndarray:
    """1-based ranks of x, largest first; equal values ordered by ``tiebreak``."""
    order = np.lexsort((tiebreak, -x))
    ranks = np.empty(len(x), dtype=np.int64)
    ranks[order] = np.arange(1, len(x) + 1)
    return ranks


def _scored_mask(pool: SelectionPool) -> np.ndarray:
    if not pool.scores:
        raise ValueError("this strategy needs influence scores, but the pool has none")
    return np.all([np.isfinite(s) for s in pool.scores.values()], axis=0)


def _key_cropi(pool: SelectionPool, tiebreak: np.ndarray) -> np.ndarray:
    ok = _scored_mask(pool)
    key = np.full(len(pool.prompt_ids), -np.inf)
    if ok.any():
        key[ok] = sum(1.0 / _ranks_desc(s[ok], tiebreak[ok]) for s in pool.scores.values())
    return key


def _key_influence_max(pool: SelectionPool, tiebreak: np.ndarray) -> np.ndarray:
    ok = _scored_mask(pool)
    return np.where(ok, np.max(np.stack(list(pool.scores.values())), axis=0), -np.inf)


def _pass_rate(pool: SelectionPool) -> np.ndarray:
    if pool.pass_rate is None:
        raise ValueError("this strategy needs offline pass rates, but the pool has none")
    return np.asarray(pool.pass_rate, dtype=np.float64)


KEYS: dict[str, Callable[[SelectionPool, np.ndarray], np.ndarray]] = {
    "cropi": _key_cropi,
    "influence_max": _key_influence_max,
    "random": lambda pool, tb: np.zeros(len(pool.prompt_ids)),
    "pass_rate": lambda pool, tb: np.where((_pass_rate(pool) > 0) & (_pass_rate(pool) < 1), 0.0, -np.inf),
    "learnability": lambda pool, tb: _pass_rate(pool) * (1 - _pass_rate(pool)),
    "full": lambda pool, tb: np.zeros(len(pool.prompt_ids)),
}


def select(strategy: str, pool: SelectionPool, fraction: float, seed: int) -> SelectionResult:
    """Select ``round(fraction * N)`` prompt ids (all for ``full``) by ``strategy``; see the module docstring."""
    if strategy not in KEYS:
        raise ValueError(f"unknown selection strategy {strategy!r}; expected one of {STRATEGIES}")
    ids = np.asarray(pool.prompt_ids, dtype=np.int64)
    n = len(ids) if strategy == "full" else n_to_select(fraction, len(ids))
    tiebreak = np.random.default_rng(seed).permutation(len(ids))
    key = KEYS[strategy](pool, tiebreak)
    order = np.lexsort((tiebreak, -key))
    eligible = order[np.isfinite(key[order])]
    chosen = eligible[:n]
    shortfall = n - len(chosen)
    if shortfall:
        log.warning("%s: only %d eligible prompts for %d slots; selecting all of them", strategy, len(chosen), n)
    return SelectionResult(ids[chosen], key[chosen], n, shortfall)
