"""Persistent hidden-state bytes per token in the teacher cache vs storing every position's final hidden state
(target <= 10%).

Since cache format 2 the sense positions' hidden states are transient: the teacher-cache stage writes them to the
scratch area (``$DSKD_HOME/scratch/teacher_cache/<key>/hidden/``), the sense-index stage (their only reader) deletes
them once its artifact is complete. Persistent: every file of the real cache artifact (built by the real stage)
that holds them -- ``hidden/`` files, or ``sense_hidden``/``sense_positions`` columns in the shards' Parquet footers
(``row_group(i).column(j).total_compressed_size``) -- expected 0. Scratch: the hidden shards' bytes as the stage
recorded them (``scratch_hidden_bytes`` in the manifest; the scratch copy itself may already be consumed). Both
are divided by what fp16 final hidden states at EVERY position would take raw (tokens x d x 2 B). The dictionary
reservoir (``reservoir.parquet``, also hidden states, but bounded by distinct predicted tokens x cap, not by
corpus size) is reported beside it, not in the per-token figure.
"""

from __future__ import annotations

import _common as C
from logit_bytes import column_bytes


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    args = p.parse_args()
    C.setup(args)

    import json

    import numpy as np
    import pyarrow.parquet as pq

    from dskd.store.artifacts import read_manifest

    cfg = C.config(args)
    stages = C.run_stages(cfg, "teacher_cache")
    cache_dir = stages["teacher_cache"]["path"]
    capture = json.loads((cache_dir / "capture.json").read_text())
    dim, seq_len = capture["hidden_size"], cfg.corpus.seq_len
    persistent = total = rows = 0
    for shard in sorted((cache_dir / "shards").glob("*.parquet")):
        sizes = column_bytes(shard)
        persistent += sizes.get("sense_hidden", 0) + sizes.get("sense_positions", 0)
        total += sum(sizes.values())
        rows += pq.ParquetFile(shard).metadata.num_rows
    persistent += (
        sum(p.stat().st_size for p in (cache_dir / "hidden").glob("*")) if (cache_dir / "hidden").is_dir() else 0
    )
    kept = 0
    for ann in sorted((stages["annotate"]["path"] / "train").glob("*.parquet")):
        table = pq.read_table(ann, columns=["full_positions", "posonly_positions"])
        kept += sum(len(set(f) | set(o)) for f, o in zip(*(c.to_pylist() for c in table.columns), strict=True))
    metrics = read_manifest(cache_dir)["metrics"]
    scratch = metrics["scratch_hidden_bytes"]
    tokens = rows * seq_len
    all_positions = tokens * dim * 2
    reservoir_bytes = (cache_dir / "reservoir.parquet").stat().st_size
    reservoir_rows = pq.ParquetFile(cache_dir / "reservoir.parquet").metadata.num_rows
    counts = pq.read_table(cache_dir / "reservoir.parquet", columns=["count"]).column(0).to_numpy()
    ratio = persistent / all_positions
    C.log(
        f"{kept} of {tokens} positions kept ({kept / tokens:.1%}); persistent hidden {persistent / tokens:.1f} "
        f"B/token, scratch (transient) {scratch / tokens:.1f} B/token vs {dim * 2} B/token for all positions "
        f"-> persistent {ratio:.1%}, scratch {scratch / all_positions:.1%}"
    )
    C.result(
        "hidden_bytes_fraction",
        ratio,
        "<=",
        0.10,
        {
            "cache": str(cache_dir),
            "cache_format": capture.get("format", 1),
            "hidden_size": dim,
            "seq_len": seq_len,
            "sequences": rows,
            "tokens": tokens,
            "positions_kept": kept,
            "positions_kept_fraction": kept / tokens,
            "persistent_hidden_bytes": persistent,
            "persistent_hidden_bytes_per_token": persistent / tokens,
            "scratch_hidden_bytes": scratch,
            "scratch_hidden_bytes_per_token": scratch / tokens,
            "scratch_fraction_of_all_positions": scratch / all_positions,
            "all_positions_fp16_bytes": all_positions,
            "all_positions_fp16_bytes_per_token": dim * 2,
            "shard_bytes_per_token_all_columns": total / tokens,
            "reservoir_bytes": reservoir_bytes,
            "reservoir_tokens": reservoir_rows,
            "reservoir_vectors": int(counts.sum()),
            "reservoir_fraction_of_all_positions": reservoir_bytes / all_positions,
            "reservoir_tokens_at_cap": int((counts >= cfg.cache.reservoir_per_token).sum()),
            "hidden_plus_reservoir_fraction": (persistent + reservoir_bytes) / all_positions,
            "reservoir_mean_count": float(np.mean(counts)) if counts.size else 0.0,
            "reservoir_spill_runs": read_manifest(cache_dir)["execution"].get("reservoir_spill_runs", 0),
        },
    )


if __name__ == "__main__":
    main()
