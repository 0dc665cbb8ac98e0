"""Unit staging: a committed unit is trusted on a rerun only while its files keep their sha256."""

from __future__ import annotations

import json

from dskd.store.staging import UnitStaging, staging_dir


def _commit(staging: UnitStaging, index: int, payload: bytes) -> dict:
    scratch = staging.unit_dir()
    (scratch / "shards").mkdir()
    (scratch / "shards" / f"cache-{index:05d}.parquet").write_bytes(payload)
    return staging.commit(index, scratch, {"shard": index, "rows": len(payload)})


def test_committed_units_survive_and_scratch_is_dropped(tmp_path):
    staging = UnitStaging(staging_dir(tmp_path, "teacher_cache", "k1"))
    assert staging.completed() == {} and not staging.root.exists()  # nothing staged: nothing created
    _commit(staging, 0, b"zero")
    _commit(staging, 2, b"two")
    killed = staging.unit_dir()  # a unit whose process died before commit: files but no marker
    (killed / "shards").mkdir()
    (killed / "shards" / "cache-00001.parquet").write_bytes(b"half")
    done = staging.completed()
    assert sorted(done) == [0, 2]
    assert done[2]["result"] == {"shard": 2, "rows": 3}
    assert done[2]["files"][0]["path"] == "shards/cache-00002.parquet" and done[2]["files"][0]["bytes"] == 3
    assert not list(staging.root.glob(".unit-*"))  # the killed attempt's scratch dir is gone
    out = tmp_path / "artifact"
    staging.link_into(list(done.values()), out)
    assert (out / "shards" / "cache-00000.parquet").read_bytes() == b"zero"
    staging.remove()
    assert not staging.root.exists() and (out / "shards" / "cache-00002.parquet").read_bytes() == b"two"


def test_changed_file_or_torn_marker_is_not_trusted(tmp_path):
    staging = UnitStaging(tmp_path / "s")
    for i, payload in enumerate([b"aaaa", b"bbbb", b"cccc"]):
        _commit(staging, i, payload)
    (staging.root / "shards" / "cache-00000.parquet").write_bytes(b"aaab")  # same size, other bytes
    marker = staging.root / "done" / "00001.json"
    marker.write_text(marker.read_text()[:20])  # torn
    assert sorted(staging.completed()) == [2]
    assert not (staging.root / "done" / "00000.json").exists()  # untrusted markers are dropped
    again = _commit(staging, 0, b"aaaa")  # recomputed: replaces the bad file
    assert json.loads((staging.root / "done" / "00000.json").read_text()) == again
    assert sorted(staging.completed()) == [0, 2]
