"""Hidden-state bytes per token in the teacher cache vs storing every position's final hidden state (target <= 10%).

Reads the real cache Parquet footers of the bench's teacher-cache artifact (built by the real stage): the compressed
bytes of ``sense_hidden`` (+ ``sense_positions``, which the hidden states cannot be used without), summed over row
groups (``row_group(i).column(j).total_compressed_size``), divided by what fp16 final hidden states at EVERY position
would take raw (tokens x d x 2 B). The dictionary reservoir (``reservoir.parquet``, also hidden states, but bounded
by distinct predicted tokens x cap, not by corpus size) is reported beside it, not in the per-token figure.
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

    cfg = C.config(args)
    stages = C.run_stages(cfg, "teacher_cache")
    cache_dir = stages["teacher_cache"]["path"]
    capture = json.loads((cache_dir / "capture.json").read_text())
    dim, seq_len = capture["hidden_size"], cfg.corpus.seq_len
    hidden = positions = total = rows = kept = 0
    for shard in sorted((cache_dir / "shards").glob("*.parquet")):
        sizes = column_bytes(shard)
        hidden += sizes["sense_hidden"]
        positions += sizes["sense_positions"]
        total += sum(sizes.values())
        rows += pq.ParquetFile(shard).metadata.num_rows
        kept += int(sum(len(v) for v in pq.read_table(shard, columns=["sense_positions"]).column(0).to_pylist()))
    tokens = rows * seq_len
    all_positions = tokens * dim * 2
    reservoir_bytes = (cache_dir / "reservoir.parquet").stat().st_size
    reservoir_rows = pq.ParquetFile(cache_dir / "reservoir.parquet").metadata.num_rows
    counts = pq.read_table(cache_dir / "reservoir.parquet", columns=["count"]).column(0).to_numpy()
    ratio = (hidden + positions) / all_positions
    C.log(
        f"{kept} of {tokens} positions kept ({kept / tokens:.1%}); sense_hidden {hidden / tokens:.1f} B/token + "
        f"positions {positions / tokens:.2f} B/token vs {dim * 2} B/token for all positions -> {ratio:.1%}"
    )
    C.result(
        "hidden_bytes_fraction",
        ratio,
        "<=",
        0.10,
        {
            "cache": str(cache_dir),
            "hidden_size": dim,
            "seq_len": seq_len,
            "sequences": rows,
            "tokens": tokens,
            "positions_kept": kept,
            "positions_kept_fraction": kept / tokens,
            "sense_hidden_bytes": hidden,
            "sense_positions_bytes": positions,
            "sense_hidden_bytes_per_token": hidden / tokens,
            "all_positions_fp16_bytes": all_positions,
            "all_positions_fp16_bytes_per_token": dim * 2,
            "shard_bytes_per_token_all_columns": total / tokens,
            "reservoir_bytes": reservoir_bytes,
            "reservoir_tokens": reservoir_rows,
            "reservoir_vectors": int(counts.sum()),
            "reservoir_fraction_of_all_positions": reservoir_bytes / all_positions,
            "reservoir_tokens_at_cap": int((counts >= cfg.cache.reservoir_per_token).sum()),
            "hidden_plus_reservoir_fraction": (hidden + positions + reservoir_bytes) / all_positions,
            "reservoir_mean_count": float(np.mean(counts)) if counts.size else 0.0,
        },
    )


if __name__ == "__main__":
    main()
