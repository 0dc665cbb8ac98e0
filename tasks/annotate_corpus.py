"""Stage 2: tokenise the corpus into fixed-length sequences, hold out a split, sample sense positions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from prefect import task

from dskd.data.annotate import (
    HELDOUT_SCHEMA,
    TRAIN_SCHEMA,
    annotate_sequences,
    pack_documents,
    split_documents,
    write_shards,
)
from dskd.data.corpus import iter_documents
from dskd.lexicon.token_map import coverage, read_lexicon
from dskd.teacher.model import load_tokenizer
from tasks.common import run_stage, stage_cache_policy
from tasks.prepare_teacher import teacher_dir

STAGE = "annotate"


@task(cache_policy=stage_cache_policy(STAGE), persist_result=True, result_serializer="json")
def annotate_corpus(
    section: dict[str, Any],
    upstream: dict[str, str],
    home: str,
    tracking_cfg: dict[str, Any],
    parent_run_id: str | None = None,
    runtime: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Cache key: corpus section incl. the corpus files' content hash, sampling settings, lexicon + teacher keys.

    New or edited corpus files change the content hash, so this and every downstream stage recompute.
    """
    corpus, sampling = section["corpus"], section["sampling"]

    def build(tmp: Path, extra: dict, up: dict[str, Path]) -> None:
        tokenizer = load_tokenizer(teacher_dir(up["teacher"]))
        lex = read_lexicon(up["lexicon"])
        skipped: list[dict] = []  # binary / non-UTF-8 files: named in the manifest, not read as text
        docs = list(iter_documents(corpus["source"], corpus["text_field"], skipped))
        if not docs:
            raise ValueError(
                f"corpus '{corpus['source']}' has no readable UTF-8 text ({len(skipped)} file(s) skipped, first: "
                f"{skipped[0]['path'] if skipped else '-'}); add .txt/.jsonl files in UTF-8"
            )
        # Hold out whole documents: enough for the held-out sequences with a 2x margin for short docs.
        avg_tokens = max(1, int(np.mean([len(d) for d in docs[:200]]) / 4))
        n_held_docs = min(len(docs) // 2, 2 * corpus["n_heldout_seqs"] * corpus["seq_len"] // avg_tokens + 1)
        train_docs, held_docs = split_documents(docs, n_held_docs, corpus["seed"])
        L = corpus["seq_len"]
        train = pack_documents(train_docs, tokenizer, L, corpus["n_train_seqs"], range(len(train_docs)))
        held = pack_documents(held_docs, tokenizer, L, corpus["n_heldout_seqs"], range(len(held_docs)))
        if len(train) < corpus["n_train_seqs"] or not held:
            raise ValueError(
                f"corpus '{corpus['source']}' gives {len(train)} train / {len(held)} held-out sequences of "
                f"{L} tokens, fewer than asked ({corpus['n_train_seqs']}); add text or lower corpus.n_train_seqs"
            )
        rows = annotate_sequences(
            train, lex.has_entries(), corpus["seed"], sampling["max_positions"], sampling["frac_positions"]
        )
        n_train = write_shards(rows, TRAIN_SCHEMA, tmp / "train", "train", corpus["shard_seqs"])
        held_rows = ({"seq_id": i, "input_ids": ids} for i, ids in enumerate(held))
        n_held = write_shards(held_rows, HELDOUT_SCHEMA, tmp / "heldout", "heldout", corpus["shard_seqs"])
        targets = np.concatenate([s[1:] for s in train])
        cov = coverage(lex, targets)
        extra["rows"] = {"train": n_train, "heldout": n_held}
        extra["skipped_files"] = skipped
        extra["metrics"] = {
            "train_seqs": n_train,
            "heldout_seqs": n_held,
            "train_tokens": n_train * L,
            "documents": len(docs),
            "skipped_files": len(skipped),
            **{f"coverage_{k}": float(v) for k, v in cov.items()},
        }

    return run_stage(STAGE, section, upstream, home, parent_run_id, tracking_cfg, build, runtime=runtime)
