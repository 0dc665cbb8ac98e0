"""Morphological polarity fix: pairs whose words differ by an odd number of negation affixes are antonyms.

The reference (DSKD ``prep2_addjsonpolar.py``) segments words with MorphoLEX, gives a word polarity -1 when
it has an odd number of negation morphemes and an existing base, flips a pair's relation by the product of the
two polarities, and rewrites negated words to their bases. We have no MorphoLEX, and naive per-word prefix
stripping reads "increase", "inform", "import" as negations, so this is the conservative, pair-relative
version: an affix only counts when stripping it makes the two words meet at a common stem.

Meant for noisy sources (Kaikki). On WordNet it finds nothing to move to synonyms and would move 50 synset-mates
to antonyms, every one wrong (flammable/inflammable, ravel/unravel, invest/vest, thaw/unthaw): don't apply it there.
"""

from __future__ import annotations

from functools import lru_cache

__all__ = ["NEGATION_PREFIXES", "NEGATION_SUFFIXES", "fix_polarity", "polarity_parity"]

# Prefix -> letters the stem may start with (None: any). in-/im-/il-/ir- are one prefix assimilated to the
# stem's first letter, so "il" only before l (illegal), "ir" before r, "im" before b/m/p, "in" elsewhere.
# Left out on purpose: a-/an- (atypical but also "arise", "avow"), anti-, de- (opposition or removal, not
# negation: "defrost", "antibody").
NEGATION_PREFIXES: dict[str, str | None] = {
    "non": None,
    "dis": None,
    "un": None,
    "in": "acdefghijknoqstuvwxyz",
    "im": "bmp",
    "il": "l",
    "ir": "r",
}
NEGATION_SUFFIXES = ("less", "free")
# "-ful" is the positive twin of "-less": stripping it costs no negation, so careful/careless meet at "care".
_NEUTRAL_SUFFIXES = ("ful",)
_MIN_STEM = 3
_MAX_STRIPS = 2


def _stems(stem: str) -> list[str]:
    # "merciless"/"merciful" -> "merci" -> also "mercy" (y -> i before a suffix).
    return [stem, stem[:-1] + "y"] if stem.endswith("i") else [stem]


def _one_strip(word: str) -> list[tuple[str, int]]:
    """(stem, negations) for every single affix that can be stripped from ``word``."""
    out: list[tuple[str, int]] = []
    for prefix, allowed in NEGATION_PREFIXES.items():
        if word.startswith(prefix):
            stem = word[len(prefix) :]
            stem = stem[1:] if stem.startswith("-") else stem  # non-smoker
            if len(stem) >= _MIN_STEM and (allowed is None or stem[0] in allowed):
                out.append((stem, 1))
    for suffixes, neg in ((NEGATION_SUFFIXES, 1), (_NEUTRAL_SUFFIXES, 0)):
        for suffix in suffixes:
            if word.endswith(suffix):
                stem = word[: -len(suffix)]
                stem = stem[:-1] if stem.endswith("-") else stem  # sugar-free
                if len(stem) >= _MIN_STEM:
                    out.extend((s, neg) for s in _stems(stem))
    return out


@lru_cache(maxsize=1 << 18)  # a word recurs in many pairs
def _reductions(word: str) -> dict[str, tuple[int, int]]:
    """stem -> (strips, negations) for stems reachable by stripping up to ``_MAX_STRIPS`` affixes (fewest strips)."""
    best: dict[str, tuple[int, int]] = {word: (0, 0)}
    frontier = [(word, 0)]
    for depth in range(1, _MAX_STRIPS + 1):
        nxt: list[tuple[str, int]] = []
        for w, neg in frontier:
            for stem, n in _one_strip(w):
                if stem not in best:
                    best[stem] = (depth, neg + n)
                    nxt.append((stem, neg + n))
        frontier = nxt
    return best


def polarity_parity(a: str, b: str) -> int | None:
    """Negation-affix parity of a word pair: 1 (odd), 0 (even, at least two), or None (no morphological link).

    The two words must meet at a common stem by stripping negation affixes (and the neutral "-ful"); the
    common stem with the fewest strips in total decides; a tie with different parities, or a link without any
    negation affix, gives None.
    """
    if a == b:
        return None
    ra, rb = _reductions(a), _reductions(b)
    common = [(ra[s][0] + rb[s][0], ra[s][1] + rb[s][1]) for s in ra.keys() & rb.keys()]
    if not common:
        return None
    fewest = min(strips for strips, _ in common)
    parities = {neg % 2 for strips, neg in common if strips == fewest}
    negs = [neg for strips, neg in common if strips == fewest]
    if len(parities) != 1 or max(negs) == 0:
        return None
    return parities.pop()


def fix_polarity(
    syn: set[tuple[str, str]], ant: set[tuple[str, str]]
) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """Move morphologically negated pairs between the synonym and antonym sets; returns new symmetric sets.

    Rule (pair-relative, conservative): strip negation affixes from each word -- prefixes un-, dis-, non-,
    in- (im- before b/m/p, il- before l, ir- before r), optionally followed by "-"; suffixes -less, -free --
    plus the neutral suffix -ful (counts 0), at most two strips per word, every stem >= 3 characters, a stem
    ending in "i" also tried with "y". An affix counts only when the two words then meet at the SAME stem;
    the meeting with the fewest strips decides. An odd number of negations (happy/unhappy, legal/illegal,
    careless/careful) makes the pair an antonym pair: it leaves ``syn`` for ``ant``. An even, non-zero number
    (nonhappy/unhappy: both meet at "happy") makes it a synonym pair. Pairs with no common stem are untouched -- so
    "interest"/"rest" (stripping "in" gives "terest") and "unhappy"/"sad" stay where the source put them.
    A pair found in both sets ends up in the one its parity says. Input is read as symmetric; the output is
    made symmetric.
    """
    syn_out = {p for p in syn} | {(b, a) for a, b in syn}
    ant_out = {p for p in ant} | {(b, a) for a, b in ant}
    cache: dict[tuple[str, str], int | None] = {}
    for pairs in (list(syn_out), list(ant_out)):
        for a, b in pairs:
            key = (a, b) if a <= b else (b, a)
            if key not in cache:
                cache[key] = polarity_parity(a, b)
            parity = cache[key]
            if parity is None:
                continue
            src, dst = (syn_out, ant_out) if parity == 1 else (ant_out, syn_out)
            src.discard((a, b))
            src.discard((b, a))
            dst.add((a, b))
            dst.add((b, a))
    return syn_out, ant_out
