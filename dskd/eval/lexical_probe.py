"""Lexical-semantics probe from WordNet: does the model prefer a synonym over an antonym / an unrelated word?

Each item is a zero-shot two-way choice scored with :func:`dskd.eval.mc_eval.score_task` ("plain" style, same
continuation log-likelihood code as the benchmarks)::

    context      'The word "{w}" means almost the same as the word'
    choices      " {synonym}"  vs  " {antonym}"     (kind "antonym")
                 " {synonym}"  vs  " {unrelated}"   (kind "unrelated")

The space-led continuation is how words most often occur in running text, so byte-level BPE tokenisers give them
their fewest tokens (a quote-led word would split differently: ``'sad`` -> ``'s`` + ``ad`` under GPT-2 rules).
Only candidates of at most ``max_tokens`` tokens are used. The unrelated word has the synonym's token count and
a length within one character of it: token count is our frequency proxy (BPE merges follow corpus frequency;
we ship no word-frequency list). The choice order is shuffled per item, so a model that always picks the first
choice scores ~50%, not 100%.

Head words are held out of training by a fixed hash rule (:func:`is_heldout_word`, ~20% of words): a training
lexicon that drops every pair touching a held-out word (either side, since pairs are symmetric) cannot have
taught the model the probe's answers.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import defaultdict
from functools import lru_cache

from dskd.eval.loglik import MCItem, score_task
from dskd.lexicon.wordnet import wordnet_pairs

__all__ = [
    "HELDOUT_MODULUS",
    "PROBE_KINDS",
    "TEMPLATE",
    "build_probe_items",
    "drop_heldout_pairs",
    "is_heldout_word",
    "score_probe",
]

HELDOUT_MODULUS = 5
TEMPLATE = 'The word "{word}" means almost the same as the word'
PROBE_KINDS = ("antonym", "unrelated")
_WORD = re.compile(r"[a-z]{3,}")
_UNRELATED_DRAWS = 32


def is_heldout_word(word: str) -> bool:
    """True for the ~1/5 of words (lowercased, stripped) whose sha1 is 0 mod 5: probe heads, kept out of training."""
    digest = hashlib.sha1(word.strip().lower().encode("utf-8")).hexdigest()
    return int(digest, 16) % HELDOUT_MODULUS == 0


def drop_heldout_pairs(pairs: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """``pairs`` without any pair that has a held-out word on either side (pairs are symmetric, so a pair
    (kind, glad) would teach the probe item for "glad" just as (glad, kind) would)."""
    return {(a, b) for a, b in pairs if not (is_heldout_word(a) or is_heldout_word(b))}


def _neighbours(pairs: set[tuple[str, str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for a, b in pairs:
        if _WORD.fullmatch(a) and _WORD.fullmatch(b):
            out[a].add(b)
    return dict(out)


@lru_cache(maxsize=2)
def _lexicon(wn, include_similar: bool = True) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(synonyms, antonyms) of every single-word lemma; cached per reader (~2 s to build). Do not mutate."""
    syn_pairs, ant_pairs = wordnet_pairs(wn, include_similar=include_similar)
    return _neighbours(syn_pairs), _neighbours(ant_pairs)


def build_probe_items(
    wn,
    tokenizer,
    n_items: int,
    seed: int = 0,
    kinds: tuple[str, ...] = PROBE_KINDS,
    max_tokens: int = 3,
    include_similar: bool = True,
) -> list[MCItem]:
    """Up to ``n_items`` items per kind (``subject`` = the kind), from held-out WordNet head words.

    ``answer`` indexes the synonym. Words are single lowercase alphabetic lemmas of >= 3 letters; a candidate
    that is both a synonym and an antonym of the head is dropped. ``include_similar``: count WordNet adjective
    similar-to / also-see neighbours as synonyms (as the training lexicon does by default; looser synonyms,
    but most antonym-bearing adjectives have no synset-mate otherwise). Deterministic in ``seed``.
    """
    unknown = set(kinds) - set(PROBE_KINDS)
    if unknown:
        raise ValueError(f"unknown probe kind(s) {sorted(unknown)}: use {PROBE_KINDS}")
    syn, ant = _lexicon(wn, include_similar)
    heads = sorted(w for w in syn if is_heldout_word(w))
    by_length: dict[int, list[str]] = defaultdict(list)  # unrelated candidates: every lexicon word, by length
    for v in sorted(set(syn) | set(ant)):
        by_length[len(v)].append(v)

    n_tokens: dict[str, int] = {}

    def count(words: list[str]) -> None:
        todo = [w for w in words if w not in n_tokens]
        if todo:
            encoded = tokenizer([f" {w}" for w in todo], add_special_tokens=False)["input_ids"]
            for w, ids in zip(todo, encoded, strict=True):
                n_tokens[w] = len(ids)

    def fits(words: set[str]) -> list[str]:
        ordered = sorted(words)
        count(ordered)
        return [w for w in ordered if n_tokens[w] <= max_tokens]

    def unrelated(w: str, s: str) -> str | None:
        related = syn[w] | ant.get(w, set()) | syn.get(s, set()) | {w, s}
        pool = [v for d in (-1, 0, 1) for v in by_length.get(len(s) + d, []) if v not in related]
        # Draw a few at random and keep the first with the synonym's token count (cheaper than tokenising
        # the whole ~49k-word vocabulary up front).
        draws = rng.sample(pool, min(_UNRELATED_DRAWS, len(pool)))
        count(draws)
        return next((v for v in draws if n_tokens[v] == n_tokens[s]), None)

    rng = random.Random(seed)
    order = heads[:]
    rng.shuffle(order)
    items: dict[str, list[MCItem]] = {k: [] for k in kinds}
    for w in order:
        if all(len(items[k]) >= n_items for k in kinds):
            break
        synonyms = fits(syn[w] - ant.get(w, set()))
        if not synonyms:
            continue
        s = rng.choice(synonyms)
        for kind in kinds:
            if len(items[kind]) >= n_items:
                continue
            if kind == "antonym":
                antonyms = fits(ant.get(w, set()) - syn[w])
                other = rng.choice(antonyms) if antonyms else None
            else:
                other = unrelated(w, s)
            if other is None:
                continue
            choices = [s, other]
            rng.shuffle(choices)
            items[kind].append(MCItem(TEMPLATE.format(word=w), choices, choices.index(s), subject=kind))
    return [it for k in kinds for it in items[k]]


def score_probe(
    model,
    tokenizer,
    items: list[MCItem],
    batch_size: int = 32,
    max_length: int = 1024,
    device="cpu",
) -> dict[str, dict]:
    """``{"syn_vs_antonym": {acc, acc_norm, n}, "syn_vs_unrelated": {...}}``: acc = share of items where the
    synonym's continuation log-likelihood is the higher one (acc_norm: per character)."""
    out = {}
    for kind in PROBE_KINDS:
        subset = [it for it in items if it.subject == kind]
        if subset:
            out[f"syn_vs_{kind}"] = score_task(
                model, tokenizer, subset, [], 0, batch_size, max_length, device, style="plain"
            )
    return out
