"""Offline WordNet 3.0 loading (NLTK data dir or Debian ``wordnet-base`` files) and synonym/antonym pairs.

Never downloads anything: a missing WordNet is a one-line ``FileNotFoundError`` that names the fix.
"""

from __future__ import annotations

import os
import shutil
import warnings
from itertools import permutations
from pathlib import Path

import nltk
from nltk.corpus.reader.wordnet import WordNetCorpusReader

__all__ = ["DEBIAN_WORDNET_DIR", "LEXNAMES", "load_wordnet", "wordnet_pairs"]

DEBIAN_WORDNET_DIR = "/usr/share/wordnet"

# The 45 WordNet 3.0 lexicographer files (wndb(5) "lexnames"); nltk reads this file but Debian does not ship it.
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_SYNTACTIC_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}

# Files the reader cannot work without, and optional ones (lemma counts, sense keys) taken when present.
_REQUIRED = tuple(f"{kind}.{pos}" for kind in ("data", "index") for pos in ("adj", "adv", "noun", "verb")) + tuple(
    f"{pos}.exc" for pos in ("adj", "adv", "noun", "verb")
)
_OPTIONAL = ("cntlist.rev", "index.sense")

_NOT_FOUND = (
    "WordNet not found (no corpora/wordnet in {dirs} and no Debian dict files in {debian}): "
    "run `sudo apt-get install wordnet-base` (or scripts/ensure_wordnet.sh) "
    "or `python -m nltk.downloader wordnet`"
)

# Loading parses ~30 MB of index files (seconds); readers are shared per corpus root within a process.
_READERS: dict[str, WordNetCorpusReader] = {}


class _FastWordNetReader(WordNetCorpusReader):
    """WordNetCorpusReader that skips the WordNet-3.0 sense-key remapping done at construction.

    The stock reader builds ``map30`` from index.sense for Open Multilingual WordNet lookups, which we never
    use (no OMW reader is attached); skipping it roughly halves load time and makes index.sense optional.
    """

    def map_wn(self, version: str = "wordnet") -> None:
        return None


def _lexnames_text() -> str:
    return "".join(f"{i:02d}\t{name}\t{_SYNTACTIC_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))


def _candidate_data_dirs(nltk_data_dir: str | None) -> list[Path]:
    """NLTK data dirs in lookup order: explicit one, nltk.data.path, $NLTK_DATA, ~/nltk_data (deduplicated)."""
    raw: list[str] = []
    if nltk_data_dir:
        raw.append(nltk_data_dir)
    raw.extend(str(p) for p in nltk.data.path if isinstance(p, (str, os.PathLike)))
    raw.extend(p for p in os.environ.get("NLTK_DATA", "").split(os.pathsep) if p)
    raw.append(os.path.expanduser("~/nltk_data"))
    out: list[Path] = []
    for p in raw:
        path = Path(p).expanduser().absolute()
        if path not in out:
            out.append(path)
    return out


def _wordnet_resource(data_dir: Path) -> str | None:
    """nltk resource name of the WordNet corpus in ``data_dir``, or None if it has none."""
    corpus = data_dir / "corpora" / "wordnet"
    if (corpus / "lexnames").is_file() and (corpus / "data.noun").is_file():
        return "corpora/wordnet"
    if (data_dir / "corpora" / "wordnet.zip").is_file():
        # A zipped corpus (what nltk.download leaves) is found as a directory inside the zip: trailing "/".
        return "corpora/wordnet.zip/wordnet/"
    return None


def _allow(data_dir: Path) -> None:
    # nltk >= 3.9 sandbox: every file opened must lie under an nltk.data.path entry ("Security Violation").
    if str(data_dir) not in [str(p) for p in nltk.data.path]:
        nltk.data.path.insert(0, str(data_dir))


def _open_reader(data_dir: Path, resource: str = "corpora/wordnet") -> WordNetCorpusReader:
    _allow(data_dir)
    root = nltk.data.find(resource, paths=[str(data_dir)])
    key = str(root)
    if key not in _READERS:
        with warnings.catch_warnings():
            # "The multilingual functions are not available": expected, we attach no OMW reader.
            warnings.simplefilter("ignore", UserWarning)
            _READERS[key] = _FastWordNetReader(root, None)
    return _READERS[key]


def _up_to_date(src: Path, dst: Path) -> bool:
    try:
        a, b = src.stat(), dst.stat()
    except FileNotFoundError:
        return False
    return a.st_size == b.st_size and a.st_mtime_ns == b.st_mtime_ns


def _place(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` (keeping mtime) atomically, so concurrent workers never see a partial file."""
    if _up_to_date(src, dst):
        return
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def _build_debian_root(debian_dir: Path, cache_dir: Path) -> Path:
    """Lay out ``<cache_dir>/corpora/wordnet/`` from the Debian dict files plus a written ``lexnames``.

    Files are copied (~30 MB, once): nltk's sandbox resolves symlinks and refuses a target outside the
    corpus root ("Path /usr/share/wordnet/data.adj escapes root ...") and refuses hard links too
    ("refusing multiply-linked file").
    """
    corpus = cache_dir / "corpora" / "wordnet"
    corpus.mkdir(parents=True, exist_ok=True)
    for name in _REQUIRED + tuple(n for n in _OPTIONAL if (debian_dir / n).is_file()):
        _place(debian_dir / name, corpus / name)
    lexnames = corpus / "lexnames"
    text = _lexnames_text()
    if not lexnames.is_file() or lexnames.read_text(encoding="utf-8") != text:
        tmp = corpus / f".lexnames.{os.getpid()}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, lexnames)
    return corpus


def _default_cache_dir() -> Path:
    return Path(os.environ.get("DSKD_HOME", "./.dskd")) / "nltk_data"


def load_wordnet(
    nltk_data_dir: str | None = None,
    cache_dir: str | Path | None = None,
    debian_dir: str | Path = DEBIAN_WORDNET_DIR,
) -> WordNetCorpusReader:
    """Load WordNet 3.0 offline and return an nltk ``WordNetCorpusReader``.

    Lookup order:
      1. an NLTK data dir holding ``corpora/wordnet`` (directory or ``wordnet.zip``): ``nltk_data_dir``, then
         the entries of ``nltk.data.path``, ``$NLTK_DATA`` and ``~/nltk_data``;
      2. the Debian ``wordnet-base`` dict files in ``debian_dir``, laid out as ``<cache_dir>/corpora/wordnet``
         (default ``$DSKD_HOME/nltk_data``, ``DSKD_HOME`` defaulting to ``./.dskd``) with a written
         ``lexnames``; ``cache_dir`` is added to ``nltk.data.path`` (nltk's sandbox requires it).
    Raises ``FileNotFoundError`` (one line naming the install commands) when neither exists.
    Readers are cached per corpus root within the process.
    """
    candidates = _candidate_data_dirs(nltk_data_dir)
    for data_dir in candidates:
        resource = _wordnet_resource(data_dir)
        if resource is not None:
            return _open_reader(data_dir, resource)

    debian = Path(debian_dir)
    if all((debian / name).is_file() for name in _REQUIRED):
        cache = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
        cache = cache.absolute()
        _build_debian_root(debian, cache)
        return _open_reader(cache)

    raise FileNotFoundError(_NOT_FOUND.format(dirs=", ".join(map(str, candidates)), debian=debian))


_DATA_FILES = ("noun", "verb", "adj", "adv")
_FILE_OF_POS = {"n": "noun", "v": "verb", "a": "adj", "s": "adj", "r": "adv"}


def _clean(word: str) -> str:
    # Adjective lemmas may carry a syntactic marker: "galore(ip)", "elect(p)", "former(a)".
    if word.endswith(")") and "(" in word:
        word = word[: word.index("(")]
    return word.replace("_", " ").lower()


def _parse_data_file(text: str, file: str, words: dict, antonym_ptrs: list, similar_ptrs: list) -> None:
    """Parse one wndb(5) data file: ``offset lex_filenum ss_type w_cnt (word lex_id)* p_cnt (ptr)* ... | gloss``.

    A pointer is ``symbol offset pos source/target`` (source/target: two 2-digit hex word numbers, 0000 for
    a synset-to-synset pointer).
    """
    for line in text.splitlines():
        if not line or line[0] == " ":  # licence header lines start with two spaces
            continue
        fields = line.split(" | ", 1)[0].split()
        offset, ss_type = int(fields[0]), fields[2]
        n_words = int(fields[3], 16)
        names = [_clean(fields[4 + 2 * i]) for i in range(n_words)]
        key = (file, offset)
        words[key] = names
        i = 4 + 2 * n_words
        n_ptrs = int(fields[i])
        for j in range(i + 1, i + 1 + 4 * n_ptrs, 4):
            symbol, target, pos, src_tgt = fields[j : j + 4]
            if symbol == "!" and src_tgt != "0000":
                antonym_ptrs.append(
                    (names[int(src_tgt[:2], 16) - 1], (_FILE_OF_POS[pos], int(target)), int(src_tgt[2:], 16) - 1)
                )
            elif symbol in ("&", "^") and src_tgt == "0000" and ss_type in "as" and pos in "as":
                similar_ptrs.append((key, ("adj", int(target))))


def wordnet_pairs(
    wn: WordNetCorpusReader, include_similar: bool = True
) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """Symmetric (synonym, antonym) word-pair sets from WordNet.

    Synonyms: distinct lemma names sharing a synset; with ``include_similar`` also the lemma names of an
    adjective synset and of the synsets it points to with similar-to (``similar_tos()``) or a synset-level
    also-see (``also_sees()``). Antonyms: lexical antonym pointers (``lemma.antonyms()``). Names are
    lowercased with underscores turned into spaces; self pairs are dropped; both (a, b) and (b, a) are present.

    Reads the reader's data files directly (through its sandboxed ``open``) instead of ``all_synsets()``:
    same pairs as the Synset/Lemma API, but ~1-2 s instead of ~10 s, nltk's line parser being the cost.
    """
    words: dict[tuple[str, int], list[str]] = {}
    antonym_ptrs: list[tuple[str, tuple[str, int], int]] = []
    similar_ptrs: list[tuple[tuple[str, int], tuple[str, int]]] = []
    for file in _DATA_FILES:
        with wn.open(f"data.{file}") as fp:
            text = fp.read()
        _parse_data_file(text, file, words, antonym_ptrs, similar_ptrs)

    syn: set[tuple[str, str]] = set()
    for names in words.values():
        syn.update(permutations(set(names), 2))
    if include_similar:
        for src, tgt in similar_ptrs:
            for a in set(words[src]):
                for b in set(words[tgt]):
                    if a != b:
                        syn.add((a, b))
                        syn.add((b, a))
    ant: set[tuple[str, str]] = set()
    for a, tgt, index in antonym_ptrs:
        b = words[tgt][index]
        if a != b:
            ant.add((a, b))
            ant.add((b, a))
    return syn, ant
