"""The teacher pass's host work on a writer thread: same files as inline, order kept, errors raised in the caller."""

from __future__ import annotations

import threading

import pytest

from dskd.data.annotate import TRAIN_SCHEMA, write_shards
from dskd.senses.dictionary import Reservoir
from dskd.teacher.cache import cache_shard, reservoir_rows, write_reservoir
from dskd.teacher.host_writer import HostWriter
from dskd.teacher.model import load_causal_lm
from dskd.teacher.schema import CACHE_FORMAT
from tests.annotated import random_annotated_rows


def test_overlapped_pass_writes_the_inline_pass_byte_for_byte(tiny_teacher_dir, tmp_path):
    rows = random_annotated_rows(7, 12, full=[1, 4], posonly=[4, 7], seed=5)
    write_shards(rows, TRAIN_SCHEMA, tmp_path / "ann", "train", 8)
    model = load_causal_lm(tiny_teacher_dir)
    capture = {"vocab_size": 49152, "topk": 4, "kd_temperature": 1.0, "hidden_size": 64, "teacher_key": "t"}
    capture["format"] = CACHE_FORMAT
    files = {}
    for overlap in (False, True):
        out = tmp_path / str(overlap)
        out.mkdir()
        reservoir = Reservoir(cap=2, dim=64)  # cap 2: later vectors replace slots, so draw order matters
        ann = tmp_path / "ann" / "train-00000.parquet"
        n = cache_shard(
            model, ann, out / "c.parquet", reservoir, capture, 2, "cpu", hidden_path=out / "h.parquet", overlap=overlap
        )
        assert n == 7  # 4 batches, the last one short
        write_reservoir(reservoir_rows(reservoir), out / "r.parquet")
        files[overlap] = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    assert set(files[True]) == {"c.parquet", "h.parquet", "r.parquet"}
    assert files[True] == files[False]


def test_items_run_in_order_on_another_thread():
    seen: list[tuple[int, str]] = []
    with HostWriter(lambda i: seen.append((i, threading.current_thread().name)), depth=1) as writer:
        for i in range(20):
            writer.submit(i)
    assert [i for i, _ in seen] == list(range(20))
    assert {name for _, name in seen} == {"teacher-host-writer"}


def test_an_error_on_the_thread_is_raised_in_the_caller():
    def work(i: int) -> None:
        if i == 3:
            raise OSError(f"disk full at batch {i}")

    writer = HostWriter(work, depth=1)
    with pytest.raises(OSError, match="disk full at batch 3"):
        for i in range(50):  # raised at a later submit, or at close
            writer.submit(i)
        writer.close()
    with pytest.raises(OSError, match="disk full"):
        writer.close()  # the thread has stopped; the error stays


def test_the_callers_error_stops_the_thread_without_hanging():
    done: list[int] = []
    with pytest.raises(KeyError), HostWriter(done.append, depth=1) as writer:
        writer.submit(1)
        raise KeyError("forward failed")
    assert writer._thread is not None and not writer._thread.is_alive()
