"""Shared artifact store over pyarrow.fs: publish (manifest last), fetch (sha256-checked, atomic), refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from dskd.config import ConfigError, load_config
from dskd.store.artifacts import artifact_dir, is_complete, read_manifest, write_artifact
from dskd.store.remote import ArtifactStore


def _make_artifact(home: Path, key: str = "k1") -> Path:
    with write_artifact(home, "lexicon", key, {"a": 1}, {}) as (tmp, extra):
        (tmp / "pairs.txt").write_text("happy glad\n")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "x.bin").write_bytes(b"\x00\x01\x02")
        extra["metrics"] = {"n": 1}
    return artifact_dir(home, "lexicon", key)


def test_publish_then_fetch_into_another_home(tmp_path):
    store = ArtifactStore((tmp_path / "store").as_uri())
    local = _make_artifact(tmp_path / "a")
    assert not store.has("lexicon", "k1")
    assert store.publish(local, "lexicon", "k1") is True
    assert store.has("lexicon", "k1")
    assert (tmp_path / "store" / "artifacts" / "lexicon" / "k1" / "sub" / "x.bin").read_bytes() == b"\x00\x01\x02"
    assert store.publish(local, "lexicon", "k1") is False  # already there: nothing rewritten

    other = artifact_dir(tmp_path / "b", "lexicon", "k1")
    assert store.ensure_local(other) is True
    assert is_complete(other) and read_manifest(other) == read_manifest(local)
    assert (other / "pairs.txt").read_text() == "happy glad\n" and (other / "sub" / "x.bin").stat().st_size == 3
    assert store.ensure_local(other) is False  # complete locally: no transfer
    assert store.ensure_all_local([other, str(artifact_dir(tmp_path / "c", "lexicon", "k1"))]) == 1


def test_a_corrupted_remote_file_is_refused_and_nothing_is_left(tmp_path):
    store = ArtifactStore((tmp_path / "store").as_uri())
    store.publish(_make_artifact(tmp_path / "a"), "lexicon", "k1")
    (tmp_path / "store" / "artifacts" / "lexicon" / "k1" / "pairs.txt").write_text("happy sad\n")
    dest = artifact_dir(tmp_path / "b", "lexicon", "k1")
    with pytest.raises(ValueError, match="does not match its manifest sha256") as err:
        store.fetch("lexicon", "k1", dest)
    assert "\n" not in str(err.value)
    assert not dest.exists() and not list(dest.parent.iterdir())  # no partial dir, no temp dir


def test_half_published_artifact_is_not_visible(tmp_path):
    store = ArtifactStore((tmp_path / "store").as_uri())
    # Files without the manifest = an upload that died midway: it must not count as published.
    partial = tmp_path / "store" / "artifacts" / "lexicon" / "k2"
    partial.mkdir(parents=True)
    (partial / "pairs.txt").write_text("x")
    assert not store.has("lexicon", "k2")
    with pytest.raises(ValueError, match="not a complete artifact"):
        store.publish(tmp_path / "nowhere", "lexicon", "k2")


def test_credentials_in_the_uri_are_refused_without_echoing_them():
    with pytest.raises(ConfigError, match="must not contain credentials") as err:
        load_config(None, ["storage.uri=s3://AKIDEXAMPLE:s3cr3t@bucket/dskd"])
    assert "s3cr3t" not in str(err.value) and "AKIDEXAMPLE" not in str(err.value)
    with pytest.raises(ValueError, match="must not contain credentials"):
        ArtifactStore("s3://AKIDEXAMPLE:s3cr3t@bucket/dskd")


def test_unknown_scheme_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot be opened .*file:///abs/path or s3://"):
        ArtifactStore("nosuchfs://bucket/x")


@pytest.fixture
def s3_store_uri(monkeypatch):
    """A real S3-protocol server (moto) on 127.0.0.1:<free port>, stopped afterwards; pyarrow's S3 client talks HTTP."""
    import boto3
    from moto.server import ThreadedMotoServer

    from tests.servers import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)  # credentials from the environment, as documented
    try:
        endpoint = f"127.0.0.1:{port}"
        boto3.client("s3", endpoint_url=f"http://{endpoint}", region_name="us-east-1").create_bucket(Bucket="dskd")
        yield f"s3://dskd/team?endpoint_override={endpoint}&scheme=http&region=us-east-1"
    finally:
        server.stop()


def test_s3_store_round_trip(tmp_path, s3_store_uri):
    store = ArtifactStore(s3_store_uri)
    local = _make_artifact(tmp_path / "a", key="s3key")
    assert store.publish(local, "lexicon", "s3key") and store.has("lexicon", "s3key")
    dest = artifact_dir(tmp_path / "b", "lexicon", "s3key")
    store.fetch("lexicon", "s3key", dest)
    assert read_manifest(dest) == read_manifest(local)
    assert (dest / "sub" / "x.bin").read_bytes() == b"\x00\x01\x02"
    assert (dest / "pairs.txt").read_text() == "happy glad\n"
