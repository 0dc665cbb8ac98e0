"""The pipeline against an existing two-node Ray cluster on loopback (train.ray_address), then the cluster stops.

The nodes are started with ray.cluster_utils.Cluster (Ray's own multi-node test harness): `ray start` rewrites
127.0.0.1 to the machine's routable address, and servers in tests must bind to loopback only.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


@pytest.fixture()
def two_node_cluster():
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)  # the second node brings its own CPU
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_pipeline_caches_and_trains_on_a_two_node_cluster(two_node_cluster, tiny_teacher_dir, tmp_path):
    import ray

    from flows.dskd_pipeline import dskd_pipeline

    assert two_node_cluster.address.startswith("127.0.0.1:")
    overrides = [
        f"home={tmp_path}",
        f"teacher.path={tiny_teacher_dir}",
        "corpus.n_train_seqs=8",
        "corpus.n_heldout_seqs=2",
        "corpus.seq_len=32",
        "train.batch_size=2",
        "train.epochs=1",
        "eval.tasks=[]",
        "eval.probe_items=0",
        "corpus.shard_seqs=4",  # 2 shards for the 2 teacher replicas
        "cache.num_workers=2",  # teacher pass on the cluster too: one CPU per replica, so both nodes
        "train.num_workers=2",  # one CPU each: the workers must land on both nodes
        f"train.ray_address={two_node_cluster.address}",
        "student.n_layers=2",
        "student.n_trainable_layers=1",
    ]
    summary = dskd_pipeline(None, overrides)
    stages = {row["stage"]: row for row in summary["stages"]}
    assert not stages["train"]["cached"]
    history = json.loads((Path(stages["train"]["path"]) / "history.json").read_text())
    assert [h["step"] for h in history] == [1, 2]  # 8 sequences / 2 workers / batch 2
    cache = json.loads((Path(stages["teacher_cache"]["path"]) / "manifest.json").read_text())
    execution = {"workers": 2, "shards": 2, "nodes": 2, "reservoir_spill_runs": 0, "compute_dtypes": ["float32"]}
    assert cache["execution"] == execution
    # The pipeline connected to the cluster instead of starting its own, and left it running.
    ray.init(address=two_node_cluster.address)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert len(nodes) == 2 and {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}
