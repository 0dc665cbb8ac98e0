"""Corpus folders: binary and non-UTF-8 files are named and skipped, never read as mojibake."""

from __future__ import annotations

import json

from dskd.data.corpus import iter_documents, read_text_file


def test_binary_and_latin1_files_are_skipped_by_name(tmp_path, caplog):
    (tmp_path / "good.txt").write_text("First paragraph.\r\n\r\nSecond paragraph.\n", encoding="utf-8", newline="")
    (tmp_path / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (tmp_path / "latin1.txt").write_bytes("Un café au lait.".encode("latin-1"))
    (tmp_path / "rows.jsonl").write_text(json.dumps({"text": "A JSON row, déjà vu."}) + "\n", encoding="utf-8")
    skipped: list[dict] = []
    docs = list(iter_documents(str(tmp_path), skipped=skipped))
    assert docs == ["First paragraph.", "Second paragraph.", "A JSON row, déjà vu."]
    assert [(s["path"].rsplit("/", 1)[1], s["reason"].split(" (")[0]) for s in skipped] == [
        ("image.txt", "binary"),
        ("latin1.txt", "not UTF-8"),
    ]
    # "é" in Latin-1 is the single byte 0xe9 at offset 6 of "Un café".
    assert "byte 0xe9 at offset 6" in skipped[1]["reason"]
    assert sum("skipping" in r.message and "latin1.txt" in r.message for r in caplog.records) == 1


def test_read_text_file_accepts_utf8(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("naïve", encoding="utf-8")
    assert read_text_file(path) == ("naïve", None)
