"""Cost of integrity on read as a share of the teacher-cache stage it guards (target <= 3 %).

What the teacher-cache stage consumes is checked when it starts and while it reads: the teacher's non-Parquet files
(safetensors, tokenizer, config) are hashed against their manifest (``verify_consumed``) and the annotated shards are
read with Parquet page checksums verified. Measured side by side in one process: reading every annotated and cache
shard with and without ``page_checksum_verification`` (interleaved medians), the sha256 pass over the teacher
artifact, and the teacher pass over every shard (the stage's work, into a scratch dir). value = (verified read -
plain read of the annotated shards + sha256 of the teacher) / teacher pass seconds. The same extra for the cache
shards the train stage reads is reported beside it (train steps dwarf it further).
"""

from __future__ import annotations

import _common as C


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    C.setup(args)

    import shutil
    import time

    import pyarrow.parquet as pq

    from dskd.store import integrity
    from dskd.teacher.cache import TeacherPass
    from tasks.cache_teacher_outputs import expected_capture

    cfg = C.config(args)
    stages = C.run_stages(cfg, "teacher_cache")
    ann = sorted((stages["annotate"]["path"] / "train").glob("*.parquet"))
    cache = sorted((stages["teacher_cache"]["path"] / "shards").glob("*.parquet"))

    def reader(paths, verify):
        return lambda: [pq.read_table(p, page_checksum_verification=verify) for p in paths]

    times = C.interleave(
        {
            "ann_plain": reader(ann, False),
            "ann_verified": reader(ann, True),
            "cache_plain": reader(cache, False),
            "cache_verified": reader(cache, True),
        },
        args.repeats,
    )
    med = {k: C.median(v) for k, v in times.items()}
    teacher_art = stages["teacher"]["path"]
    sha = []
    for _ in range(args.repeats):
        integrity._VERIFIED.clear()
        t0 = time.perf_counter()
        hashed = integrity.verify_consumed(teacher_art)
        sha.append(time.perf_counter() - t0)
    sha_s = C.median(sha)
    model_dir = C.model_dir_of(stages)
    section = stages["teacher_cache"]["section"]
    capture = expected_capture(stages["teacher_cache"]["upstream"]["teacher"], model_dir, section)
    scratch = C.short_tmp("ic")
    try:
        teacher = TeacherPass(model_dir, section, capture)
        t0 = time.perf_counter()
        for i, shard in enumerate(ann):
            teacher.cache(i, shard, scratch)
        pass_s = time.perf_counter() - t0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    extra = max(0.0, med["ann_verified"] - med["ann_plain"]) + sha_s
    ratio = extra / pass_s
    C.log(
        f"teacher pass {pass_s:.2f} s; annotate read {med['ann_plain'] * 1e3:.1f} -> "
        f"{med['ann_verified'] * 1e3:.1f} ms verified; "
        f"sha256 of the teacher ({hashed / 1e6:.1f} MB) {sha_s * 1e3:.1f} ms -> {ratio:.2%} of the stage"
    )
    C.result(
        "integrity_cost_fraction",
        ratio,
        "<=",
        0.03,
        {
            "teacher_pass_seconds": pass_s,
            "teacher_bytes_hashed": hashed,
            "teacher_sha256_seconds": sha_s,
            **{f"{k}_seconds": v for k, v in med.items()},
            "cache_read_extra_seconds": med["cache_verified"] - med["cache_plain"],
            "cache_read_extra_fraction_of_plain": (med["cache_verified"] - med["cache_plain"]) / med["cache_plain"],
            "annotate_shards": len(ann),
            "cache_shards": len(cache),
        },
    )


if __name__ == "__main__":
    main()
