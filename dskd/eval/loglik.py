"""Zero-shot choice scoring for project-made items (the lexical probe), with the harness's own log-likelihood.

The benchmarks run as harness tasks (:mod:`dskd.eval.harness`); items that are not a harness task are scored
here with the same code path: ``HFLM.loglikelihood`` on ``(prompt, " " + choice)`` requests, ``acc`` = argmax of
the summed continuation log-probabilities, ``acc_norm`` = argmax per character of the continuation (the harness's
``multiple_choice`` definitions). No second scorer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["MCItem", "choice_logliks", "score_task"]


@dataclass
class MCItem:
    """One multiple-choice item. ``answer`` indexes ``choices``.

    ``context``: optional text shown before the question; ``subject``: a grouping label (the probe kind).
    """

    question: str
    choices: list[str]
    answer: int
    context: str = ""
    subject: str = ""


def _prompt(item: MCItem) -> str:
    return f"{item.context}\n{item.question}" if item.context else item.question


def choice_logliks(model, tokenizer, items: Sequence[MCItem], batch_size: int = 32) -> list[list[float]]:
    """Per item, the harness's log p(" " + choice | prompt) for every choice (prompt = question, after the
    context if any)."""
    from lm_eval.api.instance import Instance

    from dskd.eval.harness import harness_lm

    lm = harness_lm(model, tokenizer, batch_size)
    requests = [
        Instance("loglikelihood", doc={}, arguments=(_prompt(it), f" {c}"), idx=j)
        for it in items
        for j, c in enumerate(it.choices)
    ]
    flat = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    out, k = [], 0
    for it in items:
        out.append(flat[k : k + len(it.choices)])
        k += len(it.choices)
    return out


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))  # ties go to the lower index, as np.argmax


def score_task(
    model,
    tokenizer,
    items: Sequence[MCItem],
    fewshot: Sequence[MCItem] = (),
    k_shot: int = 0,
    batch_size: int = 32,
    max_length: int | None = None,
    device=None,
    *,
    style: str = "plain",
) -> dict:
    """``{acc, acc_norm, n}`` of ``model`` on zero-shot ``items`` (the call shape the probe has always used;
    ``max_length``/``device`` are the model's own: the harness runs it where it is). Few-shot or other prompt
    styles are harness tasks now: a ValueError here."""
    if k_shot or fewshot or style != "plain":
        raise ValueError("score_task scores zero-shot 'plain' items only; benchmarks run as harness tasks")
    if not items:
        return {"acc": float("nan"), "acc_norm": float("nan"), "n": 0}
    scores = choice_logliks(model, tokenizer, items, batch_size)
    correct = sum(_argmax(s) == it.answer for it, s in zip(items, scores, strict=True))
    correct_norm = sum(
        _argmax([v / len(f" {c}") for v, c in zip(s, it.choices, strict=True)]) == it.answer
        for it, s in zip(items, scores, strict=True)
    )
    return {"acc": correct / len(items), "acc_norm": correct_norm / len(items), "n": len(items)}
