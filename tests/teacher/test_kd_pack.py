"""Packed KD columns (cache.kd_encoding=packed): exact ids, bounded value error, the KD loss on the decoded form,
the capture check, and a tiny packed cache shard written by cache_shard and read back by the training reader."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dskd.config import CacheConfig
from dskd.data.annotate import TRAIN_SCHEMA, write_shards
from dskd.senses.dictionary import Reservoir
from dskd.teacher.cache import cache_shard
from dskd.teacher.kd_pack import (
    PACKED_COLUMNS,
    STEP,
    PackedKD,
    RowGroupBuffer,
    check_encoding,
    decode_batch,
    encoding_capture,
    pack,
    unpack,
)
from dskd.teacher.model import final_hidden_and_logits, load_causal_lm
from dskd.teacher.schema import CACHE_FORMAT, capture_of, check_capture
from dskd.train.data import _row, collate
from dskd.train.loop import compute_losses
from dskd.train.losses import kd_loss, sampled_kd_loss
from dskd.train.student import build_student
from tests.annotated import random_annotated_rows

V = 49152


def _round_trip(packed: PackedKD, k: int, vocab: int) -> PackedKD:
    return PackedKD.from_columns(packed.to_columns(vocab), k, vocab, packed.step)


def test_hand_example():
    # p = (1/2, 1/4, 1/8) on ids (7, 300, 2): kept mass 7/8, rest 1/8.
    packed = pack(np.array([[7, 300, 2]]), np.log([[0.5, 0.25, 0.125]]), V)
    assert packed.gaps.tolist() == [[2, 5, 255]]  # sorted 2, 7, 300: gaps 2, 5, then 293 >= 255 is escaped
    assert packed.wide.tolist() == [293]
    # Codes in id order (2, 7, 300): round(2 ln2 / 0.25) = round(5.55) = 6, 0, round(ln2 / 0.25) = round(2.77) = 3.
    assert packed.q.tolist() == [6, 0, 3]
    assert packed.mass.tolist() == [144]  # round(8 ln 7) + 128 = round(15.57) + 128
    ids, logp = unpack(_round_trip(packed, 3, V))
    assert ids.tolist() == [[2, 7, 300]]
    # p̂ = sigmoid(2) * (e^-1.5, 1, e^-0.75) / (1 + e^-0.75 + e^-1.5) = 0.8808 * (0.1316, 0.5898, 0.2786)
    np.testing.assert_allclose(np.exp(logp), [[0.11591, 0.51949, 0.24539]], atol=1e-5)


@pytest.mark.parametrize("vocab", [V, 128256])
def test_ids_round_trip_exactly(vocab):
    rng = np.random.default_rng(0)
    n, k = 64, 20
    ids = np.stack([rng.choice(vocab, k, replace=False) for _ in range(n)])
    ids[0, :4] = [0, 254, 509, vocab - 1]  # id 0, a gap of exactly 255 (escaped), the last id
    ids[1, :3] = [1, 2, 3]  # gaps of 1
    packed = _round_trip(pack(ids, rng.normal(size=(n, k)), vocab), k, vocab)
    got, _ = unpack(packed)
    np.testing.assert_array_equal(got, np.sort(ids, axis=1))
    assert packed.to_columns(vocab)["kd_wide"].__len__() == packed.wide.size * (2 if vocab <= 65536 else 4)


def test_sampled_repeats_keep_counts_and_one_value_per_id():
    ids = np.array([[900, 5, 5, 900, 5, 17]])
    logp = np.log([[0.2, 0.3, 0.3, 0.2, 0.3, 0.01]])
    packed = pack(ids, logp, V)
    assert packed.gaps.tolist() == [[5, 0, 0, 12, 255, 0]]  # 5 5 5 17 900 900: repeats are zero gaps
    assert packed.q.size == 3  # one code per distinct id
    got, logp_hat = unpack(_round_trip(packed, 6, V))
    assert got.tolist() == [[5, 5, 5, 17, 900, 900]]
    assert logp_hat[0, 0] == logp_hat[0, 1] == logp_hat[0, 2] and logp_hat[0, 4] == logp_hat[0, 5]
    # Kept mass over the distinct ids: 0.3 + 0.01 + 0.2 = 0.51, coded round(8 logit(0.51)) = round(0.32) = 0 -> 0.5.
    assert packed.mass.tolist() == [128]
    np.testing.assert_allclose(np.exp(logp_hat[0, [0, 3, 4]]).sum(), 0.5, rtol=1e-6)


def test_value_error_is_bounded_by_half_a_step():
    rng = np.random.default_rng(1)
    n, k = 512, 20
    z = rng.normal(size=(n, 4096)) * 3
    lse = np.log(np.exp(z).sum(1))
    ids = np.argsort(-z, axis=1)[:, :k]
    logp = np.take_along_axis(z, ids, 1) - lse[:, None]
    packed = pack(ids, logp, V)
    order = np.argsort(ids, axis=1)
    sorted_logp = np.take_along_axis(logp, order, 1)
    codes = packed.q.reshape(n, k).astype(np.float64) * STEP
    assert np.abs(codes - (sorted_logp.max(1, keepdims=True) - sorted_logp)).max() <= STEP / 2 + 1e-9
    _, logp_hat = unpack(packed)
    # Differences between ids of a row: within one step; the kept mass: within 1/16 in logit.
    diff = (logp_hat - logp_hat[:, :1]) - (sorted_logp - sorted_logp[:, :1])
    assert np.abs(diff).max() <= STEP + 1e-5
    m, m_hat = np.exp(logp).sum(1), np.exp(logp_hat.astype(np.float64)).sum(1)
    logit = lambda x: np.log(x / (1 - x))  # noqa: E731
    assert np.abs(logit(m_hat) - logit(m)).max() <= 1 / 16 + 1e-4


def test_kd_loss_on_the_packed_form_matches_the_original():
    torch.manual_seed(0)
    n, vocab, k, t = 256, 2048, 20, 1.0
    teacher = torch.randn(n, vocab) * 4  # peaked: the top-20 hold most of the mass
    student = torch.randn(n, vocab) * 4
    values, ids = teacher.topk(k, dim=-1)
    lse = torch.logsumexp(teacher / t, dim=-1)
    exact = kd_loss(student, values, ids, lse, t, alpha=1.0)
    # Order does not matter: the same loss with the k columns permuted.
    perm = torch.randperm(k)
    assert torch.allclose(kd_loss(student, values[:, perm], ids[:, perm], lse, t, alpha=1.0), exact, rtol=1e-6)
    packed = pack(ids.numpy(), (values / t - lse[:, None]).numpy(), vocab)
    got_ids, got_logits, got_lse = decode_batch([packed], t)
    loss = kd_loss(student, got_logits[0], got_ids[0], got_lse[0], t, alpha=1.0)
    # Stated tolerance: 1 % of the loss (the codes move each log p by <= 1/8 nat, the kept mass by <= 1/32 in logit).
    assert abs(float(loss) - float(exact)) <= 0.01 * float(exact)
    sampled_ids = torch.multinomial(torch.softmax(teacher, -1), k, replacement=True).sort(-1).values
    sampled_vals = teacher.gather(-1, sampled_ids)
    exact_s = sampled_kd_loss(student, sampled_vals, sampled_ids, lse, t, alpha=1.0)
    ps = pack(sampled_ids.numpy(), (sampled_vals / t - lse[:, None]).numpy(), vocab)
    s_ids, s_logits, s_lse = decode_batch([ps], t)
    assert torch.equal(s_ids[0], sampled_ids)
    got_s = sampled_kd_loss(student, s_logits[0], s_ids[0], s_lse[0], t, alpha=1.0)
    assert abs(float(got_s) - float(exact_s)) <= 0.01 * abs(float(exact_s))


def test_encoding_mismatch_and_old_caches_are_refused_in_one_line():
    packed, fp16 = encoding_capture("packed"), encoding_capture("fp16")
    check_encoding(packed, packed)
    check_encoding(fp16, fp16)
    with pytest.raises(ValueError, match=r"kd_encoding='fp16' but this run reads cache.kd_encoding='packed'") as e:
        check_encoding(packed, fp16)
    assert "rerun the teacher-cache stage" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"no kd_encoding \(an older cache format\).*rerun the teacher-cache stage"):
        check_encoding(fp16, {"topk": 20})
    with pytest.raises(ValueError, match=r"packed layout"):
        check_encoding(packed, encoding_capture("packed", step=0.125))
    with pytest.raises(ValueError, match=r"captured with kd_encoding='fp16' but this run needs 'packed'"):
        check_capture({"topk": 20, "format": CACHE_FORMAT, **packed}, {"topk": 20, "format": CACHE_FORMAT, **fp16})
    with pytest.raises(ValueError, match=r"not one of"):
        encoding_capture("int4")


def test_kd_encoding_is_part_of_the_cache_key():
    assert CacheConfig().kd_encoding == "fp16"
    assert CacheConfig(kd_encoding="packed").key_dump() != CacheConfig().key_dump()


def test_corrupt_packed_row_is_a_one_line_error():
    cols = pack(np.array([[3, 9]]), np.log([[0.5, 0.25]]), V).to_columns(V)
    with pytest.raises(ValueError, match=r"rerun the teacher-cache stage") as e:
        PackedKD.from_columns({**cols, "kd_q": cols["kd_q"][:1]}, 2, V)
    assert "\n" not in str(e.value)


L, K, T = 12, 4, 2.0


@pytest.fixture(scope="module")
def shards(tiny_teacher_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("packed")
    rows = random_annotated_rows(3, L, full=[1, 4], posonly=[4, 7])
    write_shards(rows, TRAIN_SCHEMA, tmp / "ann", "train", 8)
    model = load_causal_lm(tiny_teacher_dir)
    base = {"vocab_size": V, "topk": K, "kd_temperature": T, "hidden_size": 64, "teacher_key": "t"}
    out = {}
    for encoding in ("fp16", "packed"):
        capture = {**base, **encoding_capture(encoding)}
        path = tmp / f"c-{encoding}.parquet"
        cache_shard(model, tmp / "ann" / "train-00000.parquet", path, Reservoir(cap=3, dim=64), capture, 2, "cpu")
        out[encoding] = path
    return model, rows, out


def test_packed_shard_columns_and_parquet_options(shards):
    _, _, paths = shards
    table = pq.read_table(paths["packed"])
    assert table.schema.names == ["seq_id", *PACKED_COLUMNS]  # hidden states go to their own shards (scratch)
    assert all(table.schema.field(c).type == pa.binary() for c in PACKED_COLUMNS)
    assert capture_of(table.schema)["kd_encoding"] == "packed"
    meta = pq.ParquetFile(paths["packed"]).metadata
    for j in range(meta.num_columns):
        col = meta.row_group(0).column(j)
        assert col.compression == "ZSTD" and not col.has_dictionary_page
    pq.read_table(paths["packed"], page_checksum_verification=True)  # checksums written (a bad page would raise)
    # Batches of 2 sequences, one row group for the 3 rows (groups are sized in positions, not batches).
    assert meta.num_row_groups == 1 and meta.num_rows == 3


def test_row_groups_are_sized_in_positions(tmp_path):
    schema = pa.schema([("x", pa.int64())])
    groups = RowGroupBuffer(seq_len=128, positions=256)  # 2 sequences per group
    with pq.ParquetWriter(tmp_path / "g.parquet", schema) as writer:
        for i in range(5):  # five "batches" of one row
            groups.write(writer, pa.table({"x": [i]}, schema=schema))
        groups.flush(writer)
        groups.flush(writer)  # nothing buffered: no empty group
    meta = pq.ParquetFile(tmp_path / "g.parquet").metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [2, 2, 1]
    assert pq.read_table(tmp_path / "g.parquet").column("x").to_pylist() == [0, 1, 2, 3, 4]


def test_training_reader_decodes_the_packed_shard(shards, tiny_teacher_dir):
    model, rows, paths = shards
    tiny_teacher = tiny_teacher_dir
    ids = torch.tensor(np.stack([r["input_ids"] for r in rows]), dtype=torch.long)
    with torch.no_grad():
        _, logits = final_hidden_and_logits(model, ids)
    logp_full = torch.log_softmax(logits.float() / T, dim=-1)
    top_ids = logits.topk(K, dim=-1).indices
    ann = pq.read_table(sorted((paths["packed"].parent / "ann").glob("*.parquet"))[0])
    cand = pa.table(
        {
            "sense_positions": [np.zeros(0, np.int32)] * 3,
            "full": [np.zeros(0, bool)] * 3,
            "pos_rows": [np.zeros(0, np.int32)] * 3,
            "neg_rows": [np.zeros(0, np.int32)] * 3,
        }
    )
    batches = {}
    for encoding, path in paths.items():
        cache = pq.read_table(path)
        batch_rows = [_row(ann, cache, cand, i, kappa=2) for i in range(3)]
        assert (batch_rows[0].kd_packed is not None) == (encoding == "packed")
        batches[encoding] = collate(batch_rows)
    packed = batches["packed"]
    np.testing.assert_array_equal(packed.topk_ids.numpy(), np.sort(top_ids.numpy(), axis=-1))
    assert torch.equal(packed.lse, torch.zeros(3, L))
    exact = logp_full.gather(-1, packed.topk_ids)
    got = packed.topk_logits / T
    # Decoded log p: within one step plus the kept-mass code error (1/16 logit) of the exact log-softmax.
    assert float((got - exact).abs().max()) <= STEP + 1 / 16
    student = torch.randn(3 * L, V)
    losses = {
        e: kd_loss(student, b.topk_logits.reshape(-1, K), b.topk_ids.reshape(-1, K), b.lse.reshape(-1), T)
        for e, b in batches.items()
    }
    # The random tiny teacher is flat: its top-4 keep ~1e-4 of the mass, known to 1/16 in logit (<= 6.5 %), and the
    # loss scales with that mass; so 10 % here (the peaked case above holds to 1 %).
    assert abs(float(losses["packed"]) - float(losses["fp16"])) <= 0.1 * float(losses["fp16"])
    # The training step's loss function takes the packed batch as it comes (and backpropagates through it).
    student_model = build_student(tiny_teacher, n_layers=2, n_trainable=1)
    cfg = {"loss": "kd", "alpha": 0.7, "lam": 1.0, "beta_p": 1.0, "beta_n": 1.0, "margin": 1.0}
    out = {e: compute_losses(student_model, b, None, cfg, T) for e, b in batches.items()}
    kd = {e: float(o["kd"].detach()) for e, o in out.items()}
    assert abs(kd["packed"] - kd["fp16"]) <= 0.1 * kd["fp16"]
    out["packed"]["total"].backward()
    grads = [p.grad for p in student_model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
