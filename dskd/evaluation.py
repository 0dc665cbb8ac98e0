"""Held-out language-model metrics, same code for the teacher and every student."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


@torch.no_grad()
def heldout_metrics(model, sequences: np.ndarray, batch_size: int = 8, device: str = "cpu") -> dict[str, float]:
    """Perplexity and next-token accuracy over [N, L] held-out token sequences (every position t < L-1)."""
    model.eval()
    total_nll = 0.0
    correct = 0
    count = 0
    for start in range(0, len(sequences), batch_size):
        ids = torch.as_tensor(sequences[start : start + batch_size], dtype=torch.long, device=device)
        logits = model(input_ids=ids).logits[:, :-1].float()
        targets = ids[:, 1:]
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
        total_nll += float(nll)
        correct += int((logits.argmax(-1) == targets).sum())
        count += targets.numel()
    mean_nll = total_nll / max(count, 1)
    return {
        "heldout_nll": mean_nll,
        "heldout_perplexity": math.exp(mean_nll),
        "heldout_accuracy": correct / max(count, 1),
        "heldout_tokens": float(count),
    }
