"""Which positions of a sequence get the sense loss (method.md §4, reference train.py)."""

from __future__ import annotations

import math

import numpy as np


def sense_sample_size(n_lexicon: int, max_n: int = 25, frac: float = 0.4) -> int:
    """n = ⌊frac·|A|⌋ when that exceeds ``max_n``, else min(max_n, |A|)."""
    scaled = math.floor(frac * n_lexicon)
    return scaled if scaled > max_n else min(max_n, n_lexicon)


def sample_sense_positions(
    has_lexicon: np.ndarray,
    rng: np.random.Generator,
    max_n: int = 25,
    frac: float = 0.4,
) -> tuple[np.ndarray, np.ndarray]:
    """Sample (full_positions, positive_only_positions) of one sequence, both sorted int64.

    ``has_lexicon [L]`` marks positions whose next token has synonym/antonym entries (the set A). n positions
    are drawn from A without replacement (full sense loss), then n more uniformly from all L positions without
    replacement (positive-only loss). The two draws are independent, as in the reference, so the sets may
    overlap: a position can carry both terms.
    """
    has_lexicon = np.asarray(has_lexicon, dtype=bool).reshape(-1)
    candidates = np.flatnonzero(has_lexicon)
    n = sense_sample_size(candidates.size, max_n, frac)
    full = rng.choice(candidates, size=n, replace=False) if n else np.empty(0, dtype=np.int64)
    pos_only = rng.choice(has_lexicon.size, size=n, replace=False) if n else np.empty(0, dtype=np.int64)
    return np.sort(full).astype(np.int64), np.sort(pos_only).astype(np.int64)
