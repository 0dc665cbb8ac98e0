"""Teacher cache: Parquet round trip against a direct forward pass, schema/capture checks, reservoir file."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from dskd.data.annotate import TRAIN_SCHEMA, write_shards
from dskd.senses.dictionary import Reservoir
from dskd.teacher.cache import cache_shard, read_reservoir, reservoir_rows, write_reservoir
from dskd.teacher.model import final_hidden_and_logits, load_causal_lm
from dskd.teacher.schema import capture_of, check_capture
from tests.annotated import random_annotated_rows

L, K, T = 12, 4, 2.0


@pytest.fixture(scope="module")
def cached(tiny_teacher_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cache")
    rows = random_annotated_rows(3, L, full=[1, 4], posonly=[4, 7])
    write_shards(rows, TRAIN_SCHEMA, tmp / "ann", "train", 8)
    model = load_causal_lm(tiny_teacher_dir)
    capture = {"vocab_size": 49152, "topk": K, "kd_temperature": T, "hidden_size": 64, "teacher_key": "t"}
    reservoir = Reservoir(cap=3, dim=64)
    n = cache_shard(model, tmp / "ann" / "train-00000.parquet", tmp / "c.parquet", reservoir, capture, 2, "cpu")
    write_reservoir(reservoir_rows(reservoir), tmp / "r.parquet")
    return model, rows, pq.read_table(tmp / "c.parquet"), capture, n, tmp


def test_round_trip_matches_forward(cached):
    model, rows, table, _, n, _ = cached
    assert n == 3 and table.num_rows == 3
    ids = torch.tensor(np.stack([r["input_ids"] for r in rows]), dtype=torch.long)
    with torch.no_grad():
        hidden, logits = final_hidden_and_logits(model, ids)
    values, top_ids = logits.topk(K, dim=-1)
    for i in range(3):
        got_ids = np.asarray(table.column("topk_ids")[i].values).reshape(L, K)
        got_vals = np.asarray(table.column("topk_logits")[i].values, dtype=np.float32).reshape(L, K)
        np.testing.assert_array_equal(got_ids, top_ids[i].numpy())
        np.testing.assert_allclose(got_vals, values[i].numpy(), rtol=2e-3, atol=2e-3)  # fp16 storage
        lse = np.asarray(table.column("lse")[i].values)
        np.testing.assert_allclose(lse, torch.logsumexp(logits[i] / T, -1).numpy(), rtol=1e-5)
        # union of full {1,4} and positive-only {4,7}
        assert table.column("sense_positions")[i].as_py() == [1, 4, 7]
        got_h = np.asarray(table.column("sense_hidden")[i].values, dtype=np.float32).reshape(3, 64)
        np.testing.assert_allclose(got_h, hidden[i, [1, 4, 7]].numpy(), rtol=2e-3, atol=2e-3)


def test_schema_types_and_capture(cached):
    _, _, table, capture, _, _ = cached
    import pyarrow as pa

    assert table.schema.field("topk_ids").type.value_type == pa.uint16()  # vocab 49152 fits 16 bits
    assert table.schema.field("topk_logits").type.value_type == pa.float16()
    assert capture_of(table.schema) == capture


def test_capture_mismatch_is_refused_with_the_difference(cached):
    _, _, table, capture, _, _ = cached
    with pytest.raises(ValueError, match=r"captured with topk=4 but this run needs 8") as err:
        check_capture({**capture, "topk": 8}, capture_of(table.schema))
    assert "\n" not in str(err.value)


def test_reservoir_file_keyed_by_predicted_token(cached):
    model, rows, _, _, _, tmp = cached
    ids = torch.tensor(np.stack([r["input_ids"] for r in rows]), dtype=torch.long)
    with torch.no_grad():
        predicted = set(final_hidden_and_logits(model, ids)[1].argmax(-1).reshape(-1).tolist())
    items = list(read_reservoir(tmp / "r.parquet", 64))
    assert {tok for tok, _ in items} == predicted
    assert all(1 <= v.shape[0] <= 3 and v.shape[1] == 64 for _, v in items)
