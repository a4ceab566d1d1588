"""One seeded draw of a subset, used wherever a capped number of prompts is taken from a file."""

from __future__ import annotations

import numpy as np


def seeded_subset(n_total: int, n: int, seed: int) -> np.ndarray:
    """The positions of ``n`` of ``n_total`` items drawn without replacement with ``seed``, sorted (the subset in
    file order); all positions when ``n >= n_total``. The same seed gives the same subset."""
    return np.sort(np.random.default_rng(seed).permutation(n_total)[:n])
