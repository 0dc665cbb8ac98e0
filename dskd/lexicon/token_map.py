"""Map word pairs to teacher token ids (method.md §2) and store the result as Parquet (no pickle)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dskd.lexicon.types import ANTONYM, SYNONYM, TokenLexicon
from dskd.store.integrity import PARQUET_WRITE, read_table

__all__ = [
    "PAIRS_FILE",
    "VIRTUAL_FILE",
    "build_token_lexicon",
    "coverage",
    "lexicon_from_table",
    "lexicon_to_table",
    "read_lexicon",
    "virtual_spans_table",
    "write_lexicon",
]

PAIRS_FILE = "pairs.parquet"
VIRTUAL_FILE = "virtual_spans.parquet"
_VOCAB_KEY = b"dskd.vocab_size"
_BATCH = 8192

_PAIRS_SCHEMA = pa.schema([("head", pa.int64()), ("tail", pa.int64()), ("relation", pa.int8())])
_VIRTUAL_SCHEMA = pa.schema([("virtual_id", pa.int64()), ("token_ids", pa.list_(pa.int64()))])


def _tokenize(words: list[str], tokenizer: Any) -> list[list[int]]:
    """Token ids of ``" " + word`` for every word, batched (one Rust call per chunk, not one per word)."""
    texts = [" " + w for w in words]

    def wrapped(batch: list[str]) -> list[list[int]]:
        return tokenizer(batch, add_special_tokens=False)["input_ids"]

    encode = wrapped
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and texts:
        # The Rust backend skips transformers' per-encoding Python wrapping (~1/3 of the time for 100k
        # words); use it only when it agrees with the wrapper on a probe, since a wrapper may pre-process.
        def raw(batch: list[str]) -> list[list[int]]:
            return [e.ids for e in backend.encode_batch(batch, add_special_tokens=False)]

        probe = texts[:: max(1, len(texts) // 256)]
        if raw(probe) == wrapped(probe):
            encode = raw
    out: list[list[int]] = []
    for i in range(0, len(texts), _BATCH):
        out.extend(encode(texts[i : i + _BATCH]))
    return out


def _pair_keys(pairs: Iterable[tuple[str, str]], head_of: dict, tail_of: dict, n_ids: int) -> np.ndarray:
    keys = [head_of[a] * n_ids + tail_of[b] for a, b in pairs if a in head_of and b in tail_of]
    return np.unique(np.asarray(keys, dtype=np.int64))


def build_token_lexicon(
    syn: set[tuple[str, str]],
    ant: set[tuple[str, str]],
    tokenizer: Any,
    max_tail_tokens: int = 3,
    min_head_chars: int = 3,
) -> TokenLexicon:
    """Turn word pairs into a ``TokenLexicon`` for ``tokenizer`` (a Hugging Face tokenizer).

    Each word is tokenised as ``" " + word`` without special tokens. A pair (a, b) becomes a row when a is a
    head word -- exactly one token and ``len(a) >= min_head_chars`` -- and b is 1..``max_tail_tokens``
    tokens. A multi-token tail gets a virtual id ``vocab_size + i`` with ``virtual_spans[i]`` its token ids
    (identical spans share one id; ids ordered by span, only spans used by a kept row). Rows are deduplicated,
    self rows (tail == head token) dropped, and a (head, tail) found as both synonym and antonym is dropped
    from both (ambiguous). ``vocab_size = len(tokenizer)`` (added tokens included).
    """
    vocab_size = len(tokenizer)
    words = sorted({w for pairs in (syn, ant) for pair in pairs for w in pair})
    token_ids = _tokenize(words, tokenizer)

    head_of: dict[str, int] = {}
    tail_of: dict[str, int] = {}
    spans: dict[tuple[int, ...], int] = {}  # span -> provisional index
    for word, ids in zip(words, token_ids, strict=True):
        if len(ids) == 1:
            tail_of[word] = ids[0]
            if len(word) >= min_head_chars:
                head_of[word] = ids[0]
        elif 2 <= len(ids) <= max_tail_tokens:
            tail_of[word] = vocab_size + spans.setdefault(tuple(ids), len(spans))
    n_ids = vocab_size + len(spans)

    syn_keys = _pair_keys(syn, head_of, tail_of, n_ids)
    ant_keys = _pair_keys(ant, head_of, tail_of, n_ids)
    ambiguous = np.intersect1d(syn_keys, ant_keys, assume_unique=True)
    syn_keys = np.setdiff1d(syn_keys, ambiguous, assume_unique=True)
    ant_keys = np.setdiff1d(ant_keys, ambiguous, assume_unique=True)

    keys = np.concatenate([syn_keys, ant_keys])
    relation = np.concatenate([np.full(len(syn_keys), SYNONYM, np.int8), np.full(len(ant_keys), ANTONYM, np.int8)])
    heads, tails = keys // n_ids, keys % n_ids
    keep = heads != tails
    heads, tails, relation = heads[keep], tails[keep], relation[keep]

    # Renumber the virtual ids that survived, in span order, so ids are dense and deterministic.
    by_index = list(spans)
    used = np.unique(tails[tails >= vocab_size]) - vocab_size
    used_spans = sorted(by_index[i] for i in used)
    new_index = {span: i for i, span in enumerate(used_spans)}
    remap = np.full(len(spans), -1, dtype=np.int64)
    for i in used:
        remap[i] = vocab_size + new_index[by_index[i]]
    virtual = tails >= vocab_size
    tails = tails.copy()
    tails[virtual] = remap[tails[virtual] - vocab_size]

    order = np.lexsort((tails, -relation.astype(np.int64), heads))
    return TokenLexicon(
        vocab_size=vocab_size,
        heads=heads[order].astype(np.int64),
        tails=tails[order].astype(np.int64),
        relation=relation[order],
        virtual_spans=[list(span) for span in used_spans],
    )


def lexicon_to_table(lex: TokenLexicon) -> pa.Table:
    """Rows as an Arrow table (head int64, tail int64, relation int8); ``vocab_size`` in the schema metadata."""
    table = pa.table(
        [
            pa.array(np.asarray(lex.heads, dtype=np.int64)),
            pa.array(np.asarray(lex.tails, dtype=np.int64)),
            pa.array(np.asarray(lex.relation, dtype=np.int8)),
        ],
        schema=_PAIRS_SCHEMA,
    )
    return table.replace_schema_metadata({_VOCAB_KEY: str(lex.vocab_size).encode()})


def virtual_spans_table(lex: TokenLexicon) -> pa.Table:
    """Virtual spans as an Arrow table (virtual_id int64, token_ids list<int64>); ``vocab_size`` in metadata."""
    ids = np.arange(lex.vocab_size, lex.n_ids, dtype=np.int64)
    spans = pa.array([[int(t) for t in span] for span in lex.virtual_spans], type=pa.list_(pa.int64()))
    table = pa.table([pa.array(ids), spans], schema=_VIRTUAL_SCHEMA)
    return table.replace_schema_metadata({_VOCAB_KEY: str(lex.vocab_size).encode()})


def lexicon_from_table(table: pa.Table, virtual_table: pa.Table) -> TokenLexicon:
    """Inverse of ``lexicon_to_table`` / ``virtual_spans_table``; validates ids and relations."""
    meta = table.schema.metadata or {}
    if _VOCAB_KEY not in meta:
        raise ValueError(f"lexicon table has no {_VOCAB_KEY.decode()} in its schema metadata")
    vocab_size = int(meta[_VOCAB_KEY])
    vmeta = virtual_table.schema.metadata or {}
    if _VOCAB_KEY in vmeta and int(vmeta[_VOCAB_KEY]) != vocab_size:
        raise ValueError(f"vocab_size mismatch: pairs {vocab_size}, virtual spans {int(vmeta[_VOCAB_KEY])}")

    virtual_ids = virtual_table.column("virtual_id").to_numpy()
    order = np.argsort(virtual_ids, kind="stable")
    if not np.array_equal(virtual_ids[order], np.arange(vocab_size, vocab_size + len(order))):
        raise ValueError(f"virtual ids must be exactly {vocab_size}..{vocab_size + len(order) - 1}")
    spans_col = virtual_table.column("token_ids").to_pylist()
    virtual_spans = [list(spans_col[i]) for i in order]

    heads = table.column("head").to_numpy().astype(np.int64)
    tails = table.column("tail").to_numpy().astype(np.int64)
    relation = table.column("relation").to_numpy().astype(np.int8)
    n_ids = vocab_size + len(virtual_spans)
    if len(heads) and (heads.min() < 0 or heads.max() >= vocab_size or tails.min() < 0 or tails.max() >= n_ids):
        raise ValueError(f"head/tail ids out of range (vocab_size={vocab_size}, n_ids={n_ids})")
    if not np.isin(relation, (SYNONYM, ANTONYM)).all():
        raise ValueError("relation must be SYNONYM (1) or ANTONYM (-1)")
    return TokenLexicon(vocab_size, heads, tails, relation, virtual_spans)


def _write_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp, compression="zstd", **PARQUET_WRITE)
    os.replace(tmp, path)


def write_lexicon(lex: TokenLexicon, out_dir: str | Path) -> list[Path]:
    """Write ``pairs.parquet`` and ``virtual_spans.parquet`` (zstd) into ``out_dir``; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / PAIRS_FILE, out / VIRTUAL_FILE]
    _write_atomic(lexicon_to_table(lex), paths[0])
    _write_atomic(virtual_spans_table(lex), paths[1])
    return paths


def read_lexicon(lex_dir: str | Path) -> TokenLexicon:
    """Read a lexicon written by ``write_lexicon``."""
    d = Path(lex_dir)
    return lexicon_from_table(read_table(d / PAIRS_FILE), read_table(d / VIRTUAL_FILE))


def coverage(lex: TokenLexicon, token_ids: np.ndarray) -> dict[str, float]:
    """Share of positions in ``token_ids`` (any shape) whose token heads synonym / antonym / any entries.

    Returns ``{"positions": n, "syn": ..., "ant": ..., "any": ...}``; ids outside ``[0, vocab_size)`` count
    as having no entries; shares are 0.0 for an empty input.
    """
    ids = np.asarray(token_ids).ravel()
    valid = (ids >= 0) & (ids < lex.vocab_size)
    ids = np.where(valid, ids, 0)
    out: dict[str, float] = {"positions": int(ids.size)}
    masks = {}
    for name, rel in (("syn", SYNONYM), ("ant", ANTONYM)):
        has = np.zeros(lex.vocab_size, dtype=bool)
        has[lex.heads[lex.relation == rel]] = True
        masks[name] = has[ids] & valid
    masks["any"] = masks["syn"] | masks["ant"]
    for name, mask in masks.items():
        out[name] = float(mask.mean()) if ids.size else 0.0
    return out
