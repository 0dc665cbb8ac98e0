"""Atomic artifact writes: complete with a manifest, or not there at all."""

from __future__ import annotations

import pytest

from dskd.store.artifacts import artifact_dir, is_complete, read_manifest, sha256_file, stage_key, write_artifact


def test_manifest_lists_files_with_hashes(tmp_path):
    key = stage_key("lexicon", {"a": 1}, {"teacher": "abc"})
    with write_artifact(tmp_path, "lexicon", key, {"a": 1}, {"teacher": "abc"}) as (tmp, extra):
        (tmp / "x.txt").write_text("hello")
        extra["rows"] = {"x": 1}
    final = artifact_dir(tmp_path, "lexicon", key)
    manifest = read_manifest(final)
    assert manifest["files"][0]["path"] == "x.txt"
    assert manifest["files"][0]["sha256"] == sha256_file(final / "x.txt")
    assert manifest["rows"] == {"x": 1} and manifest["upstream"] == {"teacher": "abc"}


def test_failure_leaves_nothing_behind(tmp_path):
    with pytest.raises(RuntimeError):
        with write_artifact(tmp_path, "annotate", "k1", {}, {}) as (tmp, _):
            (tmp / "half.parquet").write_text("partial")
            raise RuntimeError("boom")
    assert not is_complete(artifact_dir(tmp_path, "annotate", "k1"))
    assert list((tmp_path / "artifacts" / "annotate").iterdir()) == []


def test_existing_artifact_is_never_overwritten(tmp_path):
    for text in ("first", "second"):
        with write_artifact(tmp_path, "train", "k", {}, {}) as (tmp, _):
            (tmp / "f").write_text(text)
    assert (artifact_dir(tmp_path, "train", "k") / "f").read_text() == "first"


def test_key_depends_on_section_and_upstream():
    base = stage_key("train", {"lr": 1}, {"cache": "a"})
    assert base == stage_key("train", {"lr": 1}, {"cache": "a"})
    assert base != stage_key("train", {"lr": 2}, {"cache": "a"})
    assert base != stage_key("train", {"lr": 1}, {"cache": "b"})
