"""Reservoir memory held during a teacher pass / the configured budget ``cache.reservoir_memory_gb`` (target <= 1).

The reservoir path of one shard of the teacher pass, on a synthetic stream whose unbounded reservoir is several times
the budget: ``BoundedReservoir`` (exactly the teacher pass's: Algorithm R per predicted token, float16, spilling to
Parquet runs, tier merges) fed batch by batch, then read back through the k-way merge into ``write_reservoir`` with
the pass's row-group size (the shard's part file). Token ids are Zipf(1.1)-distributed over the vocabulary, like a
teacher's predictions (a few tokens far past the cap, a long tail). Memory = the peak of numpy/Python allocations
traced by ``tracemalloc`` (what the budget governs; after a warm-up that loads every lazily imported module) minus
the batch being offered (the teacher pass holds its hidden states anyway); value = that / budget. Beside it:
pyarrow's memory-pool peak (Parquet read/write buffers, not seen by tracemalloc, a few MiB per open file whatever
the budget), the unbounded reservoir's size (sum of min(seen, cap) x d x 2 B) and the runs written. Default:
d = 256, cap 50, V = 32,000, 1,000,000 vectors, budget 32 MiB; --tiny: d = 32, V = 8,000, 200,000 vectors, 1 MiB.
"""

from __future__ import annotations

import _common as C


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    args = p.parse_args()
    C.setup(args)

    import tempfile
    import time
    import tracemalloc
    from pathlib import Path

    import numpy as np
    import pyarrow as pa

    from dskd.teacher.reservoir import BoundedReservoir, row_group_bytes, write_reservoir

    dim, cap, vocab = (32, 50, 8000) if args.tiny else (256, 50, 32000)
    n, batch, budget = (200_000, 256, 1 << 20) if args.tiny else (1_000_000, 2048, 32 << 20)
    tmp = Path(tempfile.mkdtemp(prefix="reservoir-mem-", dir=args.home))
    rng = np.random.default_rng(0)
    batch_bytes = batch * dim * 4
    seen = np.zeros(vocab, np.int64)
    # Warm-up: every module the path imports lazily (pyarrow's writers and readers) is loaded before tracing.
    warm = BoundedReservoir(cap, dim, seed=0, memory_bytes=64 * (dim * 2 + 16), spill_dir=tmp / "warm")
    for _ in range(4):
        warm.add(rng.integers(0, 8, 64), rng.standard_normal((64, dim), dtype=np.float32))
    write_reservoir(warm.rows(), tmp / "warm.parquet")
    warm.close()
    t0 = time.perf_counter()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    pool = pa.default_memory_pool()
    pool_base = pool.bytes_allocated()
    pool.release_unused()
    res = BoundedReservoir(cap, dim, seed=0, memory_bytes=budget, spill_dir=tmp / "spill")
    for _ in range(0, n, batch):
        tokens = (rng.zipf(1.1, batch) - 1) % vocab
        res.add(tokens, rng.standard_normal((batch, dim), dtype=np.float32))
        np.add.at(seen, tokens, 1)
    runs = res.spills
    n_tokens = write_reservoir(res.rows(), tmp / "reservoir.parquet", row_group_bytes(budget))  # as cache.py
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    seconds = time.perf_counter() - t0
    res.close()
    unbounded = int(np.minimum(seen, cap).sum()) * dim * 2
    arrow_peak = pool.max_memory() - pool_base  # the pool's peak since start (warm-up included: an over-estimate)
    held = peak - base - batch_bytes
    C.log(
        f"{n} vectors (d = {dim}), {n_tokens} tokens, unbounded reservoir {unbounded / 2**20:.1f} MiB; budget "
        f"{budget / 2**20:.1f} MiB: numpy peak {held / 2**20:.2f} MiB beside the batch (+ pyarrow pool peak "
        f"{arrow_peak / 2**20:.1f} MiB, Parquet buffers), {runs} spill runs, {seconds:.1f} s"
    )
    C.result(
        "reservoir_memory_over_budget",
        held / budget,
        "<=",
        1.0,
        {
            "dim": dim,
            "cap": cap,
            "vocab": vocab,
            "vectors": n,
            "batch": batch,
            "budget_bytes": budget,
            "peak_traced_bytes": peak - base,
            "arrow_pool_peak_bytes": arrow_peak,
            "with_arrow_pool_over_budget": (held + arrow_peak) / budget,
            "batch_bytes": batch_bytes,
            "unbounded_reservoir_bytes": unbounded,
            "unbounded_over_budget": unbounded / budget,
            "reservoir_tokens": n_tokens,
            "spill_runs": runs,
            "reservoir_file_bytes": (tmp / "reservoir.parquet").stat().st_size,
            "seconds": seconds,
        },
    )


if __name__ == "__main__":
    main()
