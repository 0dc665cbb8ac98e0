"""The token-level lexicon shared by the lexicon builder, the annotator and candidate selection."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SYNONYM = 1
ANTONYM = -1


@dataclass
class TokenLexicon:
    """Head token -> related tails, as flat parallel arrays (one row per (head, tail, relation)).

    Tail ids below ``vocab_size`` are real tokens; ids ``vocab_size + i`` are *virtual* ids standing for the
    2-3-token span ``virtual_spans[i]`` (method.md §2).
    """

    vocab_size: int
    heads: np.ndarray  # int64 [P]
    tails: np.ndarray  # int64 [P]
    relation: np.ndarray  # int8 [P], SYNONYM or ANTONYM
    virtual_spans: list[list[int]] = field(default_factory=list)

    @property
    def n_ids(self) -> int:
        """Number of ids (real tokens + virtual spans) a sense table for this lexicon must cover."""
        return self.vocab_size + len(self.virtual_spans)

    def csr(self, relation: int) -> tuple[np.ndarray, np.ndarray]:
        """(indptr [vocab_size+1], ids) so that the tails of head h are ``ids[indptr[h]:indptr[h+1]]``."""
        sel = self.relation == relation
        heads, tails = self.heads[sel], self.tails[sel]
        order = np.lexsort((tails, heads))
        heads, tails = heads[order], tails[order]
        counts = np.bincount(heads, minlength=self.vocab_size)
        indptr = np.zeros(self.vocab_size + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return indptr, tails.astype(np.int64)

    def has_entries(self) -> np.ndarray:
        """Bool mask [vocab_size]: token has at least one synonym or antonym."""
        mask = np.zeros(self.vocab_size, dtype=bool)
        mask[self.heads] = True
        return mask
