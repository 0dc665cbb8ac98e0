"""The teacher pass fanned out over two Ray teacher replicas gives the in-process pass's cache and dictionary."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from dskd.config import PipelineConfig
from dskd.data.annotate import TRAIN_SCHEMA, write_shards
from dskd.teacher.cache import reservoir_file_rows
from dskd.teacher.reservoir_merge import merge_reservoir_parts, part_paths
from flows.dskd_pipeline import stage_sections
from tasks.cache_teacher_outputs import _in_process_pass, expected_capture
from tests.annotated import random_annotated_rows

L = 16


@pytest.fixture(scope="module")
def passes(tiny_teacher_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fanout")
    rows = random_annotated_rows(6, L, full=[2, 5], posonly=[9])
    write_shards(rows, TRAIN_SCHEMA, tmp / "ann", "train", 2)  # 3 shards of 2 sequences
    shards = sorted((tmp / "ann").glob("train-*.parquet"))
    cfg = PipelineConfig.model_validate(
        {"cache": {"topk": 4, "batch_size": 2, "reservoir_per_token": 2, "device": "cpu", "compute_dtype": "float32"}}
    )
    section = cfg.cache.key_dump()
    capture = expected_capture("t", tiny_teacher_dir, section)
    local = _in_process_pass(shards, tmp / "local", tiny_teacher_dir, section, capture, tokens=6 * L)

    from tasks.teacher_fanout import fan_out_teacher_pass

    runtime = {"num_workers": 2, "threads_per_worker": 1, "ray_address": None, "ray_temp_dir": str(tmp / "ray")}
    fanned = fan_out_teacher_pass(shards, tmp / "ray_out", tiny_teacher_dir, section, capture, runtime)
    # Replicas that cannot see the driver's output dir (here: it does not exist yet, as on a node without the
    # shared mount) stage their files in storage.uri; the driver collects them.
    store = tmp / "store"
    staged_runtime = {**runtime, "storage_uri": store.as_uri()}
    staged = fan_out_teacher_pass(shards, tmp / "staged_out", tiny_teacher_dir, section, capture, staged_runtime)
    return tmp, local, fanned, staged


def test_two_replicas_share_the_shards(passes):
    _, local, fanned, _ = passes
    assert [d["shard"] for d in fanned] == [0, 1, 2] == [d["shard"] for d in local]
    assert [d["rows"] for d in fanned] == [2, 2, 2]
    assert len({d["pid"] for d in fanned}) == 2  # two teacher replicas did the work


def test_fanned_out_cache_equals_in_process_cache(passes):
    tmp, _, _, _ = passes
    for name in ("cache-00000.parquet", "cache-00001.parquet", "cache-00002.parquet"):
        a, b = pq.read_table(tmp / "local" / "shards" / name), pq.read_table(tmp / "ray_out" / "shards" / name)
        for col in ("seq_id", "topk_ids"):
            assert a.column(col).to_pylist() == b.column(col).to_pylist()
        for col in ("topk_logits", "lse"):  # thread counts differ: allow float rounding
            x, y = (np.asarray(t.column(col).combine_chunks().flatten(), np.float32) for t in (a, b))
            np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-3)
        hidden = name.replace("cache-", "hidden-")
        a, b = pq.read_table(tmp / "local" / "hidden" / hidden), pq.read_table(tmp / "ray_out" / "hidden" / hidden)
        assert a.column("sense_positions").to_pylist() == b.column("sense_positions").to_pylist()
        x, y = (np.asarray(t.column("sense_hidden").combine_chunks().flatten(), np.float32) for t in (a, b))
        np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-3)


def test_merged_dictionary_does_not_depend_on_the_workers(passes):
    tmp, _, _, _ = passes

    def merged(root):
        parts = (reservoir_file_rows(p, 64) for p in part_paths(root / "parts"))
        return list(merge_reservoir_parts(parts, cap=2))

    a, b = merged(tmp / "local"), merged(tmp / "ray_out")
    assert [(t, s) for t, _, s in a] == [(t, s) for t, _, s in b] and sum(s for _, _, s in a) == 6 * L
    for (_, va, _), (_, vb, _) in zip(a, b, strict=True):
        np.testing.assert_allclose(va.astype(np.float32), vb.astype(np.float32), rtol=1e-2, atol=1e-2)


def test_replicas_without_the_driver_disk_stage_through_the_store(passes):
    tmp, _, fanned, staged = passes
    assert all("staged" not in d for d in fanned)  # same node: written in place
    assert [d["staged"] for d in staged] == [
        [f"hidden/hidden-{i:05d}.parquet", f"parts/reservoir-{i:05d}.parquet", f"shards/cache-{i:05d}.parquet"]
        for i in range(3)
    ]
    for rel in staged[0]["staged"] + staged[1]["staged"] + staged[2]["staged"]:
        assert pq.read_table(tmp / "staged_out" / rel).equals(pq.read_table(tmp / "ray_out" / rel))
    assert not list((tmp / "store").rglob("*.parquet"))  # staging removed once collected


def test_fan_out_settings_stay_out_of_artifact_keys():
    one = stage_sections(PipelineConfig.model_validate({"cache": {"num_workers": 1}}))
    four = stage_sections(
        PipelineConfig.model_validate({"cache": {"num_workers": 4, "threads_per_worker": 8, "reservoir_memory_gb": 1}})
    )
    assert one["teacher_cache"] == four["teacher_cache"] and one["train"] == four["train"]
