"""Lexical-semantics probe from WordNet: does the model tell a head word's synonym from its antonym, and from an
unrelated word?

Each item is a two-way choice between a synonym and another word (an antonym, or an unrelated word of the same
part of speech). A word ``x`` is scored by the log-likelihood of ``" x"`` in short contexts built around the head
``h``, and the item is right when the synonym scores higher::

    syn_vs_antonym    score(x) = log p(x | "another word for h is") - log p(x | "the opposite of h is")
    syn_vs_unrelated  score(x) = log p(x | "another word for h is") - log p(x | "the word")

Why contrasts, not one template: a small LM puts an antonym *after* a head in almost any context (antonyms
co-occur: "hot or cold"; morphological ones copy the head: "happy ... unhappy"), so a single synonymy template
("h means the same as ...") ranks the antonym first: the teacher scored 0.29 on the previous such template.
Scoring the same word ``x`` in a synonym context minus an antonym context cancels both that association and
``x``'s own frequency; the unrelated kind uses a pointwise mutual information (PMI) score against a neutral
context (an unrelated word is neither a synonym nor an antonym, so the contrast says nothing about it).
The two contexts were picked on *non*-held-out head words (dev) and then checked on held-out ones.

Head words are held out of training by a fixed hash rule (:func:`is_heldout_word`, ~20% of words): a training
lexicon that drops every pair touching a held-out word (either side, since pairs are symmetric) cannot have
taught the model the probe's answers.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from dskd.eval.loglik import pair_logliks
from dskd.lexicon.wordnet import wordnet_pairs

__all__ = [
    "ANTONYM_CONTEXT",
    "HELDOUT_MODULUS",
    "NEUTRAL_CONTEXT",
    "PROBE_KINDS",
    "SYNONYM_CONTEXT",
    "ProbeItem",
    "build_probe_items",
    "drop_heldout_pairs",
    "is_heldout_word",
    "item_scores",
    "score_probe",
]

HELDOUT_MODULUS = 5
SYNONYM_CONTEXT = "another word for {word} is"
ANTONYM_CONTEXT = "the opposite of {word} is"
NEUTRAL_CONTEXT = "the word"
PROBE_KINDS = ("antonym", "unrelated")
_WORD = re.compile(r"[a-z]{3,}")
_UNRELATED_DRAWS = 64
_POS = {"n": "n", "v": "v", "a": "a", "s": "a", "r": "r"}  # satellite adjectives are adjectives


@dataclass(frozen=True)
class ProbeItem:
    """One probe item: ``choices[answer]`` is the synonym of ``head``; ``kind`` says what the other choice is."""

    kind: str
    head: str
    choices: tuple[str, str]
    answer: int


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


@lru_cache(maxsize=2)
def _words_by_pos(wn) -> dict[str, dict[int, list[str]]]:
    """Single-word lemmas per part of speech ("n", "v", "a", "r"), grouped by length: the unrelated-word pool."""
    out: dict[str, dict[int, list[str]]] = {}
    for pos in ("n", "v", "a", "r"):
        by_length: dict[int, list[str]] = defaultdict(list)
        for w in sorted({name for name in wn.all_lemma_names(pos) if _WORD.fullmatch(name)}):
            by_length[len(w)].append(w)
        out[pos] = dict(by_length)
    return out


def build_probe_items(
    wn,
    tokenizer,
    n_items: int,
    seed: int = 0,
    kinds: tuple[str, ...] = PROBE_KINDS,
    max_tokens: int = 3,
    include_similar: bool = True,
) -> list[ProbeItem]:
    """Up to ``n_items`` items per kind, in ``kinds`` order, from held-out WordNet head words.

    Words are single lowercase alphabetic lemmas of >= 3 letters and at most ``max_tokens`` space-led tokens; a
    candidate that is both a synonym and an antonym of the head is dropped. The unrelated word shares a part of
    speech with the synonym, has its token count (a frequency proxy: BPE merges follow corpus frequency) and a
    length within one character, and is no synonym/antonym of the head or the synonym. A head gives one item per
    kind, both with the same synonym. The choice order is shuffled. ``include_similar``: count WordNet adjective
    similar-to / also-see neighbours as synonyms (as the training lexicon does by default). Deterministic in
    ``seed``.
    """
    unknown = set(kinds) - set(PROBE_KINDS)
    if unknown:
        raise ValueError(f"unknown probe kind(s) {sorted(unknown)}: use {PROBE_KINDS}")
    syn, ant = _lexicon(wn, include_similar)
    pools = _words_by_pos(wn) if "unrelated" in kinds else {}
    n_tokens: dict[str, int] = {}

    def count(words: list[str]) -> None:
        todo = [w for w in words if w not in n_tokens]
        if todo:
            encoded = tokenizer([f" {w}" for w in todo], add_special_tokens=False)["input_ids"]
            n_tokens.update({w: len(ids) for w, ids in zip(todo, encoded, strict=True)})

    def fits(words: set[str]) -> list[str]:
        ordered = sorted(words)
        count(ordered)
        return [w for w in ordered if n_tokens[w] <= max_tokens]

    def unrelated(w: str, s: str) -> str | None:
        related = syn[w] | ant.get(w, set()) | syn.get(s, set()) | ant.get(s, set()) | {w, s}
        pos = sorted({_POS[ss.pos()] for ss in wn.synsets(s)})
        pool = [v for p in pos for d in (-1, 0, 1) for v in pools[p].get(len(s) + d, []) if v not in related]
        # A few random draws, keeping the first with the synonym's token count (cheaper than tokenising the
        # whole vocabulary up front).
        draws = rng.sample(pool, min(_UNRELATED_DRAWS, len(pool)))
        count(draws)
        return next((v for v in draws if n_tokens[v] == n_tokens[s]), None)

    rng = random.Random(seed)
    order = sorted(w for w in syn if is_heldout_word(w))
    rng.shuffle(order)
    items: dict[str, list[ProbeItem]] = {k: [] for k in kinds}
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
            items[kind].append(ProbeItem(kind, w, (choices[0], choices[1]), choices.index(s)))
    return [it for k in kinds for it in items[k]]


def _requests(item: ProbeItem) -> list[tuple[str, str]]:
    """(context, continuation) pairs of one item: per choice, the positive context then the one subtracted."""
    negative = ANTONYM_CONTEXT.format(word=item.head) if item.kind == "antonym" else NEUTRAL_CONTEXT
    return [(ctx, f" {x}") for x in item.choices for ctx in (SYNONYM_CONTEXT.format(word=item.head), negative)]


PairScorer = Callable[[object, object, Sequence[tuple[str, str]], int], list[float]]


def item_scores(
    model, tokenizer, items: list[ProbeItem], batch_size: int = 64, scorer: PairScorer = pair_logliks
) -> list[tuple[float, float]]:
    """Per item, the two choices' scores (see the module docstring); identical requests are scored once.
    ``scorer(model, tokenizer, pairs, batch_size)`` gives log p(continuation | context) per pair (default: the
    harness's log-likelihood)."""
    per_item = [_requests(it) for it in items]
    unique = sorted({r for reqs in per_item for r in reqs})
    logp = dict(zip(unique, scorer(model, tokenizer, unique, batch_size), strict=True))
    return [(logp[r[0]] - logp[r[1]], logp[r[2]] - logp[r[3]]) for r in per_item]


def score_probe(
    model, tokenizer, items: list[ProbeItem], batch_size: int = 64, scorer: PairScorer = pair_logliks
) -> dict[str, dict]:
    """``{"syn_vs_antonym": {acc, stderr, n}, "syn_vs_unrelated": {...}}`` (kinds without items are left out):
    acc = share of items whose synonym scores strictly higher (a tie counts as wrong); stderr = binomial
    standard error sqrt(acc (1 - acc) / n)."""
    scores = item_scores(model, tokenizer, items, batch_size, scorer)
    out = {}
    for kind in PROBE_KINDS:
        hits = [sc[it.answer] > sc[1 - it.answer] for it, sc in zip(items, scores, strict=True) if it.kind == kind]
        if hits:
            acc = sum(hits) / len(hits)
            out[f"syn_vs_{kind}"] = {"acc": acc, "stderr": math.sqrt(acc * (1 - acc) / len(hits)), "n": len(hits)}
    return out
