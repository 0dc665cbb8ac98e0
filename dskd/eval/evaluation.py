"""The evaluation suite, same code for the teacher and every student: held-out perplexity and next-token
accuracy, the benchmarks through lm-evaluation-harness (:mod:`dskd.eval.harness`), and the WordNet lexical
probe."""

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


_PROBE_FIELDS = (("acc", "acc"), ("acc_stderr", "stderr"), ("n", "n"))  # metric suffix, score_probe field


def evaluate_model(
    model, tokenizer, heldout: np.ndarray, cfg: dict, wordnet=None, device: str = "cpu"
) -> tuple[dict[str, float], dict | None]:
    """(flat metrics, the harness's results dict or None) for one model: heldout_*, mc.<task>.<metric> (acc,
    acc_stderr, acc_norm, ..., n, n_shot; see :func:`dskd.eval.harness.flatten_results`), probe.<kind>.acc
    (``cfg``: an EvalConfig dump). The harness runs the model where it is (``device`` is for the rest)."""
    from dskd.eval.harness import flatten_results, run_suite
    from dskd.eval.lexical_probe import build_probe_items, score_probe

    metrics = heldout_metrics(model, heldout, cfg["batch_size"], device)
    results = None
    if cfg["tasks"]:
        results = run_suite(model, tokenizer, cfg)
        metrics.update(flatten_results(results))
    if cfg["probe_items"] and wordnet is not None:
        items = build_probe_items(wordnet, tokenizer, cfg["probe_items"], cfg["seed"])
        for kind, m in score_probe(model, tokenizer, items).items():
            metrics.update({f"probe.{kind}.{name}": m[key] for name, key in _PROBE_FIELDS})
    return metrics, results
