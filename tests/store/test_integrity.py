"""Integrity on read: Parquet page checksums catch a flipped or truncated page with a one-line error naming the
file; non-Parquet files are checked against the manifest sha256 when consumed; `dskd verify` checks a home."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from dskd.data.annotate import HELDOUT_SCHEMA, write_shards
from dskd.store.artifacts import write_artifact
from dskd.store.integrity import CorruptArtifactError, read_table, verify_artifact, verify_consumed


def make_artifact(home, key="k1"):
    rng = np.random.default_rng(0)
    rows = ({"seq_id": i, "input_ids": rng.integers(0, 49152, 512).astype(np.int32)} for i in range(64))
    with write_artifact(home, "annotate", key, {}, {}) as (tmp, _):
        write_shards(rows, HELDOUT_SCHEMA, tmp / "heldout", "heldout", 64)
        (tmp / "weights.safetensors").write_bytes(rng.bytes(10_000))
    return home / "artifacts" / "annotate" / key


def flip_middle(path, n=4096):
    data = bytearray(path.read_bytes())
    mid = len(data) // 2 - n // 2
    data[mid : mid + n] = bytes(b ^ 0xFF for b in data[mid : mid + n])
    path.write_bytes(bytes(data))


def test_pages_carry_checksums_and_a_flipped_page_is_refused(tmp_path):
    artifact = make_artifact(tmp_path)
    shard = artifact / "heldout" / "heldout-00000.parquet"
    assert read_table(shard).num_rows == 64
    flip_middle(shard)
    with pytest.raises(CorruptArtifactError) as err:
        read_table(shard)
    message = str(err.value)
    assert "\n" not in message and str(shard) in message and f"remove {artifact} and rerun" in message
    assert isinstance(err.value, ValueError)  # a user-facing error: the CLI prints it as this one line


def test_truncated_parquet_is_refused(tmp_path):
    shard = make_artifact(tmp_path) / "heldout" / "heldout-00000.parquet"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(CorruptArtifactError, match="heldout-00000.parquet"):
        read_table(shard)


def test_non_parquet_files_are_checked_against_the_manifest_when_consumed(tmp_path):
    artifact = make_artifact(tmp_path)
    assert verify_consumed(artifact) == 10_000  # the safetensors file was hashed; Parquet is left to the reader
    assert verify_consumed(artifact) == 0  # unchanged since: not hashed again in this process
    weights = artifact / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[5000] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptArtifactError, match="weights.safetensors .*sha256 differs"):
        verify_consumed(artifact)
    weights.write_bytes(bytes(data[:100]))
    with pytest.raises(CorruptArtifactError, match="100 bytes, the manifest says 10000"):
        verify_consumed(artifact)


def test_verify_command_reports_the_corrupt_artifact(tmp_path):
    from flows.cli import app

    good, bad = make_artifact(tmp_path, "good"), make_artifact(tmp_path, "bad")
    assert verify_artifact(good) == 2
    flip_middle(bad / "heldout" / "heldout-00000.parquet")
    runner = CliRunner()
    result = runner.invoke(app, ["verify", f"home={tmp_path}", "--stage", "annotate"], env={"COLUMNS": "400"})
    assert result.exit_code == 1, result.output
    assert "1 corrupt artifact(s)" in result.output and "heldout-00000.parquet" in result.output
    (bad / "heldout" / "heldout-00000.parquet").unlink()
    (bad / "manifest.json").unlink()
    (bad.parent / "bad").rename(tmp_path / "moved")
    result = runner.invoke(app, ["verify", f"home={tmp_path}"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output


def test_old_files_without_page_checksums_are_not_verified_by_pyarrow(tmp_path):
    """Why the Parquet stages' schema versions were bumped: a file written without checksums reads 'fine' even
    with verification on, so such caches are recomputed (new keys) instead of trusted."""
    import pyarrow.parquet as pq

    table = pa.table({"x": pa.array(np.arange(20_000, dtype=np.int64))})
    pq.write_table(table, tmp_path / "old.parquet", compression="none")
    flip_middle(tmp_path / "old.parquet", 64)
    assert read_table(tmp_path / "old.parquet").num_rows == 20_000  # silently wrong values


def test_lean_write_options_keep_statistics_on_scalars_and_split_float_leaves(tmp_path):
    """Bulk tensor files: min/max statistics on the scalar columns only, byte-stream-split on float leaves (lists and
    fixed-size lists), page checksums kept; the file reads back equal through the checked reader."""
    import pyarrow.parquet as pq

    from dskd.store.integrity import lean_write_options

    vec = np.arange(12, dtype=np.float16) / 7
    table = pa.table(
        {
            "token_id": pa.array([3, 4], pa.int64()),
            "ids": pa.ListArray.from_arrays(pa.array([0, 2, 4], pa.int32()), pa.array([1, 2, 3, 4], pa.uint16())),
            "vectors": pa.ListArray.from_arrays(pa.array([0, 6, 12], pa.int32()), pa.array(vec, pa.float16())),
            "fixed": pa.FixedSizeListArray.from_arrays(pa.array(vec.astype(np.float32)), 6),
        }
    )
    options = lean_write_options(table.schema)
    assert options == {
        "compression": "zstd",
        "use_dictionary": False,
        "write_page_checksum": True,
        "write_statistics": ["token_id"],
        "use_byte_stream_split": ["vectors.list.element", "fixed.list.element"],
    }
    path = tmp_path / "t.parquet"
    pq.write_table(table, path, **options)
    meta = pq.ParquetFile(path).metadata.row_group(0)
    columns = {meta.column(i).path_in_schema: meta.column(i) for i in range(meta.num_columns)}
    assert [name for name, c in columns.items() if c.is_stats_set] == ["token_id"]
    split = [name for name, c in columns.items() if "BYTE_STREAM_SPLIT" in c.encodings]
    assert split == ["vectors.list.element", "fixed.list.element"]
    assert read_table(path).equals(table)
