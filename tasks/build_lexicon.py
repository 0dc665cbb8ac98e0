"""Stage 1: synonym/antonym pairs (WordNet [+ Kaikki]) -> polarity fix -> teacher token ids (Parquet)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from dskd.eval.lexical_probe import drop_heldout_pairs
from dskd.lexicon.polarity import fix_polarity
from dskd.lexicon.token_map import build_token_lexicon, write_lexicon
from dskd.lexicon.types import ANTONYM, SYNONYM
from dskd.lexicon.wiktionary import kaikki_pairs
from dskd.lexicon.wordnet import load_wordnet, wordnet_pairs
from dskd.teacher.model import load_tokenizer
from tasks.common import run_stage, stage_cache_policy
from tasks.prepare_teacher import teacher_dir

STAGE = "lexicon"


@task(cache_policy=stage_cache_policy(STAGE), persist_result=True, result_serializer="json")
def build_lexicon(
    section: dict[str, Any],
    upstream: dict[str, str],
    home: str,
    tracking_cfg: dict[str, Any],
    parent_run_id: str | None = None,
    runtime: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Cache key: lexicon section (+ Kaikki file hash when used) and the teacher key (its tokenizer)."""

    def build(tmp: Path, extra: dict, up: dict[str, Path]) -> None:
        syn: set[tuple[str, str]] = set()
        ant: set[tuple[str, str]] = set()
        if "wordnet" in section["sources"]:
            wn = load_wordnet(section["nltk_data_dir"], cache_dir=Path(home) / "nltk_data")
            s, a = wordnet_pairs(wn, include_similar=section["include_similar"])
            syn |= s
            ant |= a
        if "kaikki" in section["sources"]:
            if not section["kaikki_path"]:
                raise ValueError("lexicon.sources has 'kaikki' but lexicon.kaikki_path is unset; set it")
            s, a = kaikki_pairs(section["kaikki_path"])
            # Only crowd-sourced Wiktionary pairs get the polarity fix: on WordNet's curated synsets every
            # pair it would move is wrong (flammable/inflammable, ravel/unravel, thaw/unthaw ...).
            if section["polarity_fix"]:
                s, a = fix_polarity(s, a)
            syn |= s
            ant |= a
        n_syn, n_ant = len(syn), len(ant)
        if section["exclude_probe_words"]:
            syn, ant = drop_heldout_pairs(syn), drop_heldout_pairs(ant)
        tokenizer = load_tokenizer(teacher_dir(up["teacher"]))
        lex = build_token_lexicon(
            syn, ant, tokenizer, max_tail_tokens=section["max_tail_tokens"], min_head_chars=section["min_head_chars"]
        )
        write_lexicon(lex, tmp)
        extra["metrics"] = {
            "word_pairs_syn": len(syn),
            "word_pairs_ant": len(ant),
            "word_pairs_dropped_probe_heldout": n_syn + n_ant - len(syn) - len(ant),
            "token_pairs_syn": int((lex.relation == SYNONYM).sum()),
            "token_pairs_ant": int((lex.relation == ANTONYM).sum()),
            "head_tokens": int(lex.has_entries().sum()),
            "virtual_ids": len(lex.virtual_spans),
        }

    return run_stage(STAGE, section, upstream, home, parent_run_id, tracking_cfg, build, runtime=runtime)
