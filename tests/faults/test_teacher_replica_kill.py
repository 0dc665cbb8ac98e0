"""kill -9 one Ray teacher replica mid-pass (cache.num_workers=2): Ray restarts it, its shard is redone, the shards
already committed are kept, and every cache shard is byte for byte the single-threaded in-process pass's."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import torch

from dskd.config import PipelineConfig
from dskd.data.annotate import TRAIN_SCHEMA, write_shards
from dskd.store.artifacts import sha256_file
from dskd.teacher.cache import TeacherPass
from tasks.cache_teacher_outputs import expected_capture
from tests.annotated import random_annotated_rows
from tests.faults.test_faults import descendants

pytestmark = pytest.mark.e2e

N_SHARDS, SEQS, L = 12, 4, 32


def test_lost_replica_shard_is_redone(tiny_teacher_dir, tmp_path):
    from tasks.teacher_fanout import fan_out_teacher_pass

    write_shards(random_annotated_rows(N_SHARDS * SEQS, L, [2, 5], [9]), TRAIN_SCHEMA, tmp_path / "ann", "train", SEQS)
    shards = sorted((tmp_path / "ann").glob("train-*.parquet"))
    section = PipelineConfig.model_validate(
        {"cache": {"topk": 4, "batch_size": 1, "reservoir_per_token": 2, "device": "cpu", "compute_dtype": "float32"}}
    ).cache.key_dump()
    capture = expected_capture("t", tiny_teacher_dir, section)
    staging = tmp_path / "staging"
    staging.mkdir()
    runtime = {"num_workers": 2, "threads_per_worker": 1, "ray_address": None, "ray_temp_dir": str(tmp_path / "ray")}
    out: dict = {}

    def run_pass() -> None:
        out["done"] = fan_out_teacher_pass(shards, staging, tiny_teacher_dir, section, capture, runtime)

    pass_thread = threading.Thread(target=run_pass)
    pass_thread.start()
    try:
        deadline = time.monotonic() + 240
        while not list((staging / "done").glob("*.json")):
            assert time.monotonic() < deadline and pass_thread.is_alive(), "no shard committed"
            time.sleep(0.005)
        replicas = [p for p in descendants(os.getpid()) if "TeacherReplica" in " ".join(p.cmdline())]
        assert len(replicas) == 2, [" ".join(p.cmdline())[:60] for p in descendants(os.getpid())]
        committed_before = len(list((staging / "done").glob("*.json")))
        victim = replicas[0].pid
        os.kill(victim, signal.SIGKILL)
    finally:
        pass_thread.join(timeout=300)
    assert not pass_thread.is_alive() and "done" in out, "the pass did not finish after the replica was lost"
    done = out["done"]
    assert [d["shard"] for d in done] == list(range(N_SHARDS))
    pids = {d["pid"] for d in done}
    restarted = pids - {p.pid for p in replicas}
    assert len(restarted) == 1, pids  # the lost replica came back as a new process and took shards on
    redone = [d["shard"] for d in done if d["pid"] in restarted]

    # Reference: the same pass in-process, one thread like each replica, uninterrupted.
    threads = torch.get_num_threads()
    try:
        teacher = TeacherPass(tiny_teacher_dir, section, capture, threads=1)
        ref = tmp_path / "ref"
        for i, shard in enumerate(shards):
            teacher.cache(i, shard, ref)
    finally:
        torch.set_num_threads(threads)
    names = [
        f"{kind}-{i:05d}.parquet"
        for kind in ("shards/cache", "hidden/hidden", "parts/reservoir")
        for i in range(N_SHARDS)
    ]
    differ = [n for n in names if sha256_file(staging / n) != sha256_file(ref / n)]
    print(
        f"\nreplica pid {victim} killed with {committed_before}/{N_SHARDS} shards committed; restarted replica "
        f"redid/took shards {redone}; {len(names) - len(differ)}/{len(names)} files sha256-equal to an "
        "uninterrupted in-process pass"
    )
    assert not differ, differ
