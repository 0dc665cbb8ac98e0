"""Log-likelihood of (context, continuation) pairs for project-made items (the lexical probe), with the harness's
own scorer: ``HFLM.loglikelihood``. The benchmarks run as harness tasks (:mod:`dskd.eval.harness`); there is no
second scorer to drift from them.

The harness's conventions hold: a context's trailing space moves to the continuation, continuation tokens are
``enc(context + continuation)`` minus the ``enc(context)`` prefix, no BOS is added by a causal LM's encoder, and
an empty context is scored after the tokenizer's prefix (EOS) token.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["pair_logliks"]


def pair_logliks(model, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 32) -> list[float]:
    """``log p(continuation | context)`` (summed over the continuation's tokens) per ``(context, continuation)``,
    in order, from the harness's HF wrapper around the in-process ``model`` (it runs where the model is)."""
    from lm_eval.api.instance import Instance

    from dskd.eval.harness import harness_lm

    if not pairs:
        return []
    for context, continuation in pairs:
        if not continuation:
            raise ValueError(f"empty continuation after {context!r}: give a non-empty continuation")
    lm = harness_lm(model, tokenizer, batch_size)
    requests = [Instance("loglikelihood", doc={}, arguments=(c, x), idx=0) for c, x in pairs]
    return [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]
