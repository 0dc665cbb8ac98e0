"""Synonym/antonym pairs from a Kaikki.org (wiktextract) English JSONL dump -- the optional second source."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["kaikki_pairs"]

_THESAURUS = "thesaurus:"


def _clean(word: Any) -> str | None:
    """Lowercased, whitespace-normalised word, or None for an unusable entry."""
    if not isinstance(word, str):
        return None
    word = word.split("#", 1)[0]  # "word#Etymology_2" style anchors (the reference strips them too)
    if word.lower().startswith(_THESAURUS):  # "Thesaurus:happy" points at the thesaurus page of "happy"
        word = word[len(_THESAURUS) :]
    word = " ".join(word.split()).lower()
    return word if word and word != ";" else None


def _related(entry: dict, key: str) -> Iterator[Any]:
    """Related words under ``key`` at the top level and in every sense."""
    blocks = [entry.get(key)] + [s.get(key) for s in entry.get("senses") or [] if isinstance(s, dict)]
    for block in blocks:
        for item in block or []:
            yield item.get("word") if isinstance(item, dict) else None


def _is_english(entry: dict) -> bool:
    return entry.get("lang") == "English" or entry.get("lang_code") == "en"


def kaikki_pairs(path: str | Path) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """Symmetric (synonym, antonym) pairs from a Kaikki/wiktextract JSONL file (``.gz`` allowed).

    Uses English entries only (``lang == "English"`` or ``lang_code == "en"``): ``synonyms`` / ``antonyms``
    lists at the top level and in ``senses[]``, each item's ``"word"``. Words are lowercased, self pairs
    dropped, both (a, b) and (b, a) returned. Blank lines are skipped; a line that is not a JSON object
    raises ``ValueError`` naming the file and line number.
    """
    path = Path(path)
    syn: set[tuple[str, str]] = set()
    ant: set[tuple[str, str]] = set()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fp:
        for lineno, line in enumerate(fp, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: malformed JSON line ({exc.msg})") from None
            if not isinstance(entry, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(entry).__name__}")
            if not _is_english(entry):
                continue
            head = _clean(entry.get("word"))
            if head is None:
                continue
            for key, out in (("synonyms", syn), ("antonyms", ant)):
                for raw in _related(entry, key):
                    word = _clean(raw)
                    if word is not None and word != head:
                        out.add((head, word))
                        out.add((word, head))
    return syn, ant
