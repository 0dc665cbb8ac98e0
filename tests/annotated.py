"""Annotated-corpus rows (the annotate stage's train schema) with random tokens, for teacher-pass tests."""

from __future__ import annotations

import numpy as np


def random_annotated_rows(n: int, length: int, full: list[int], posonly: list[int], seed: int = 0) -> list[dict]:
    """``n`` sequences of ``length`` random SmolLM2 token ids, each with the same sense positions."""
    rng = np.random.default_rng(seed)
    return [
        {
            "seq_id": i,
            "input_ids": rng.integers(0, 49152, length).astype(np.int32),
            "full_positions": np.array(full, np.int32),
            "posonly_positions": np.array(posonly, np.int32),
        }
        for i in range(n)
    ]
