"""Sense-dictionary build with faiss k-means / sklearn KMeans per token on the same vectors (target <= 0.2).

Vectors: the real dictionary reservoir of the bench's teacher cache (``reservoir.parquet``, read with
``dskd.teacher.cache.read_reservoir``), only tokens with more than k vectors (both sides copy the raw vectors of the
others). faiss: ``dskd.senses.dictionary.build_sense_table`` (the sense-index stage's call, CPU). sklearn: the
reference's per-token ``KMeans(n_clusters=k, init="k-means++", n_init=1)`` with the same iteration cap
(``max_iter=niter``) and seed. Both see the same threads (faiss: its default OpenMP threads, as the stage runs it);
the details also time faiss pinned to one thread, much faster for these many tiny problems on a busy machine. The
details compare the clusterings too (mean squared distance of each vector to its nearest centroid): speed must not
cost sense quality.
"""

from __future__ import annotations

import _common as C


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--max-tokens", type=int, default=None, help="tokens clustered (default 800, tiny 30)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 3, tiny 1)")
    args = p.parse_args()
    C.setup(args)
    max_tokens = args.max_tokens or (30 if args.tiny else 800)
    repeats = args.repeats or (1 if args.tiny else 3)

    import json
    import warnings

    import faiss
    import numpy as np
    from sklearn.cluster import KMeans

    from dskd.senses.dictionary import build_sense_table
    from dskd.teacher.cache import read_reservoir

    cfg = C.config(args)
    stages = C.run_stages(cfg, "teacher_cache")
    cache_dir = stages["teacher_cache"]["path"]
    capture = json.loads((cache_dir / "capture.json").read_text())
    dim, vocab, k, niter, seed = capture["hidden_size"], capture["vocab_size"], cfg.senses.k, cfg.senses.niter, 0
    items = [(t, v) for t, v in read_reservoir(cache_dir / "reservoir.parquet", dim) if v.shape[0] > k]
    n_eligible = len(items)
    if len(items) > max_tokens:  # evenly spaced over token ids: frequent and rare tokens alike
        items = [items[i] for i in np.linspace(0, len(items) - 1, max_tokens).astype(int)]
    n_vectors = sum(v.shape[0] for _, v in items)
    C.log(f"{len(items)} tokens ({n_eligible} with > k={k} vectors), {n_vectors} vectors of d={dim}")
    out: dict[str, dict[int, np.ndarray]] = {}

    def faiss_build() -> None:
        table = build_sense_table(items, n_ids=vocab, dim=dim, k=k, seed=seed, niter=niter, use_gpu=False)
        out["faiss"] = {t: table.senses(t) for t, _ in items}

    def faiss_build_1thread() -> None:
        # Not the pipeline's setting (it leaves faiss at its default OpenMP threads): what one thread gives.
        n0 = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            build_sense_table(items, n_ids=vocab, dim=dim, k=k, seed=seed, niter=niter, use_gpu=False)
        finally:
            faiss.omp_set_num_threads(n0)

    def sklearn_build() -> None:
        res = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning on duplicate points
            for t, x in items:
                km = KMeans(n_clusters=k, init="k-means++", n_init=1, max_iter=niter, random_state=seed).fit(x)
                res[t] = km.cluster_centers_.astype(np.float32)
        out["sklearn"] = res

    variants = {"faiss": faiss_build, "sklearn": sklearn_build, "faiss_1thread": faiss_build_1thread}
    times = C.interleave(variants, repeats, warmup=0)

    def mse(centroids: dict[int, np.ndarray]) -> float:
        total = 0.0
        for t, x in items:
            c = centroids[t]
            d2 = ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1).min(1)
            total += float(d2.sum())
        return total / n_vectors

    mse_f, mse_s = mse(out["faiss"]), mse(out["sklearn"])
    t_f, t_s = C.median(times["faiss"]), C.median(times["sklearn"])
    C.result(
        "kmeans_faiss_vs_sklearn",
        t_f / t_s,
        "<=",
        0.2,
        {
            "tokens": len(items),
            "tokens_with_more_than_k": n_eligible,
            "vectors": n_vectors,
            "dim": dim,
            "k": k,
            "niter": niter,
            "repeats": repeats,
            "faiss_s": times["faiss"],
            "sklearn_s": times["sklearn"],
            "faiss_threads": faiss.omp_get_max_threads(),
            "faiss_1thread_s": times["faiss_1thread"],
            "faiss_1thread_over_sklearn": C.median(times["faiss_1thread"]) / t_s,
            "faiss_ms_per_token": 1000 * t_f / len(items),
            "sklearn_ms_per_token": 1000 * t_s / len(items),
            "faiss_mean_sq_dist": mse_f,
            "sklearn_mean_sq_dist": mse_s,
            "quality_ratio_faiss_over_sklearn": mse_f / mse_s,
        },
    )


if __name__ == "__main__":
    main()
