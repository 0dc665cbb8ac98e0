"""Teacher cache: Parquet round trip against a direct forward pass, schema/capture/format checks, reservoir file;
hidden states in their own shard, read back or regenerated the same."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from dskd.data.annotate import TRAIN_SCHEMA, write_shards
from dskd.senses.dictionary import Reservoir
from dskd.teacher.cache import cache_shard, read_reservoir, reservoir_rows, write_reservoir
from dskd.teacher.hidden import read_hidden_shard, regenerate_hidden
from dskd.teacher.model import final_hidden_and_logits, load_causal_lm
from dskd.teacher.schema import CACHE_FORMAT, capture_of, check_capture, check_format
from tests.annotated import random_annotated_rows

L, K, T = 12, 4, 2.0


@pytest.fixture(scope="module")
def cached(tiny_teacher_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cache")
    rows = random_annotated_rows(3, L, full=[1, 4], posonly=[4, 7])
    write_shards(rows, TRAIN_SCHEMA, tmp / "ann", "train", 8)
    model = load_causal_lm(tiny_teacher_dir)
    capture = {"vocab_size": 49152, "topk": K, "kd_temperature": T, "hidden_size": 64, "teacher_key": "t"}
    capture["format"] = CACHE_FORMAT
    reservoir = Reservoir(cap=3, dim=64)
    ann = tmp / "ann" / "train-00000.parquet"
    n = cache_shard(model, ann, tmp / "c.parquet", reservoir, capture, 2, "cpu", hidden_path=tmp / "h.parquet")
    write_reservoir(reservoir_rows(reservoir), tmp / "r.parquet")
    return model, rows, pq.read_table(tmp / "c.parquet"), capture, n, tmp


def test_round_trip_matches_forward(cached):
    model, rows, table, _, n, tmp = cached
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
    # The hidden states live in their own shard; the cache shard keeps only what training reads.
    assert table.column_names == ["seq_id", "topk_ids", "topk_logits", "lse"]
    hidden_rows = list(read_hidden_shard(tmp / "h.parquet", 64))
    assert [r[0] for r in hidden_rows] == table.column("seq_id").to_pylist()
    for i, (_, positions, got_h) in enumerate(hidden_rows):
        assert positions.tolist() == [1, 4, 7]  # union of full {1,4} and positive-only {4,7}
        np.testing.assert_allclose(got_h, hidden[i, [1, 4, 7]].numpy(), rtol=2e-3, atol=2e-3)


def test_regenerated_hidden_states_equal_the_stored_ones(cached):
    model, _, _, _, _, tmp = cached
    stored = list(read_hidden_shard(tmp / "h.parquet", 64))
    regenerated = list(regenerate_hidden(model, tmp / "ann" / "train-00000.parquet", 2, "cpu"))
    assert [(s, p.tolist()) for s, p, _ in regenerated] == [(s, p.tolist()) for s, p, _ in stored]
    for (_, _, a), (_, _, b) in zip(stored, regenerated, strict=True):
        np.testing.assert_array_equal(a, b)  # same batches, same device and dtype, same float16 rounding


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


def test_an_older_cache_format_is_refused_in_one_line(cached):
    _, _, _, capture, _, _ = cached
    old = {k: v for k, v in capture.items() if k != "format"}  # format 1 had no "format" field
    for check in (lambda: check_capture(capture, old), lambda: check_format(old, "artifacts/teacher_cache/abc")):
        with pytest.raises(ValueError, match=r"has format 1 .* made by an older version; rerun the teacher-cache"):
            check()
    with pytest.raises(ValueError, match=r"delete artifacts/teacher_cache/abc\)$") as err:
        check_format(old, "artifacts/teacher_cache/abc")
    assert "\n" not in str(err.value)


def test_reservoir_file_keyed_by_predicted_token(cached):
    model, rows, _, _, _, tmp = cached
    ids = torch.tensor(np.stack([r["input_ids"] for r in rows]), dtype=torch.long)
    with torch.no_grad():
        predicted = set(final_hidden_and_logits(model, ids)[1].argmax(-1).reshape(-1).tolist())
    items = list(read_reservoir(tmp / "r.parquet", 64))
    assert {tok for tok, _ in items} == predicted
    assert all(1 <= v.shape[0] <= 3 and v.shape[1] == 64 for _, v in items)


class _FixedLogits(torch.nn.Module):
    """A stand-in decoder LM whose final hidden states and logits are given (teacher_outputs reads only those)."""

    def __init__(self, hidden: torch.Tensor, logits: torch.Tensor) -> None:
        super().__init__()
        self.hidden, self.logits = hidden, logits

    def get_decoder(self):
        return lambda input_ids: SimpleNamespace(last_hidden_state=self.hidden)

    def get_output_embeddings(self):
        return lambda hidden: self.logits


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_teacher_outputs_on_bf16_logits_equal_those_of_a_float32_copy(temperature: float, monkeypatch):
    """The reductions run on the teacher's own (bf16) logits: top-k values and ids, the argmax (lowest id among tied
    maxima) and logsumexp(z/T) equal what a float32 copy of the logits gives, ties included."""
    from dskd.teacher import cache as cache_mod
    from dskd.teacher.cache import teacher_outputs

    monkeypatch.setitem(cache_mod.LSE_SLICE_BYTES, "cpu", 16 * 4 * 1000)  # 111 rows: slices of 16 + a rest
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 37, 1000, generator=gen) * 4).to(torch.bfloat16)
    logits[0, 0, [5, 700, 3]] = 50.0  # a three-way tie for the max: the argmax is the lowest id, 3
    hidden = torch.randn(3, 37, 8, generator=gen).to(torch.bfloat16)
    values, ids, lse, argmax, hid = teacher_outputs(_FixedLogits(hidden, logits), torch.zeros(3, 37), 6, temperature)
    ref = logits.float()
    ref_values, _ = ref.topk(6, dim=-1)
    assert values.dtype == torch.float32 and torch.equal(values, ref_values)
    assert torch.equal(ref.gather(-1, ids), ref_values)  # the ids hold those values
    assert torch.equal(argmax, ref.argmax(dim=-1)) and int(argmax[0, 0]) == 3
    assert int((ref.max(dim=-1, keepdim=True).values == ref).sum(-1).max()) > 1  # the data does tie
    torch.testing.assert_close(lse, torch.logsumexp(ref / temperature, dim=-1), rtol=0, atol=1e-5)
    assert hid.dtype == torch.float32
    assert cache_mod.lse_rows_per_slice(1000, "cpu") == 16  # the pass really slices


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logsumexp_fp32_slices_equal_one_float64_reduction(dtype, monkeypatch):
    """Sliced logsumexp (a rest slice included) equals logsumexp(z/T) of a float64 copy, for float32 and bf16 logits;
    the default CPU budget gives 8 rows at the 49,152-token vocabulary, the GPU one a whole 8B teacher's batch row."""
    from dskd.teacher import cache as cache_mod

    monkeypatch.setitem(cache_mod.LSE_SLICE_BYTES, "cpu", 5 * 4 * 300)  # 5 rows per slice: 23 rows = 4 x 5 + 3
    logits = (torch.randn(23, 300, generator=torch.Generator().manual_seed(1)) * 6).to(dtype)
    lse = cache_mod.logsumexp_fp32(logits.reshape(1, 23, 300), 2.0)
    assert lse.shape == (1, 23) and lse.dtype == torch.float32
    torch.testing.assert_close(lse[0].double(), torch.logsumexp(logits.double() / 2.0, dim=-1), rtol=0, atol=1e-5)
    monkeypatch.undo()
    assert cache_mod.lse_rows_per_slice(49_152, "cpu") == 8
    assert cache_mod.lse_rows_per_slice(128_256, "cuda") == 523 and cache_mod.lse_rows_per_slice(10**9, "cpu") == 1
