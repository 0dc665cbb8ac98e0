"""Teacher-cache stage wall time / a bare teacher forward loop over the same batches (target <= 1.05).

Side by side, interleaved: (a) the real stage task ``cache_teacher_outputs.fn`` on the bench's annotated corpus
(model load, tokenizer hash, teacher pass with top-k + logsumexp + hidden states, reservoir, Parquet writes, the
manifest's sha256s and its MLflow run; a fresh artifact key per repeat, deleted afterwards), and (b) a bare
``model(input_ids).logits`` loop over the same batches with the same dtype and batch size on an already loaded
teacher. The stage's own loop (``cache_shard_and_sample`` + ``write_reservoir``) is timed inside the task by
wrapping those two functions, so the details split the ratio into per-batch overhead and fixed (per-run) overhead.
A third variant, (c) the same stage with its host work inline (``cache_shard(overlap=False)``), shows what the
writer thread behind the forward (:mod:`dskd.teacher.host_writer`) buys: ``inline_ratio`` vs the RESULT's ratio.

``--teacher-shape 1b`` runs the same measure on a random-init Llama of Llama-3.2-1B's shape with SmolLM2's tokenizer
(1.07 B parameters at V = 49,152; RESULT ``teacher_cache_overhead_1b``). The pass's extra work per token (top-k and
logsumexp over V, the hidden states' copies and writes) does not grow with the teacher's depth and width, its
forward does: this is how the ratio moves toward an 8B teacher's, which no CPU here can run in a bench.
"""

from __future__ import annotations

import functools
import shutil
import time
import uuid

import _common as C


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument(
        "--seqs", type=int, default=None, help="annotated sequences run through (default 32; 64 with 1b; tiny 8)"
    )
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 3, tiny 1)")
    p.add_argument(
        "--teacher-shape",
        choices=["default", "1b"],
        default="default",
        help="default: the bench's teacher (SmolLM2-135M); 1b: a random Llama-3.2-1B-shaped teacher (2 GB, built once)",
    )
    args = p.parse_args()
    C.setup(args)
    repeats = args.repeats or (1 if args.tiny else 3)
    n_seqs = args.seqs or (8 if args.tiny else 64 if args.teacher_shape == "1b" else 32)

    extra = {}
    if args.teacher_shape == "1b":
        from _gpu_train import LLAMA_1B, TINY_1B

        name, shape = ("random-1b-tiny", TINY_1B) if args.tiny else ("random-1b", LLAMA_1B)
        extra["teacher__path"] = str(C.random_teacher(args.home, name, shape))

    import numpy as np
    import pyarrow.parquet as pq
    import torch

    import dskd.teacher.cache as pass_mod
    import tasks.cache_teacher_outputs as stage_mod
    from dskd.teacher.model import load_causal_lm, resolve_compute_dtype, resolve_device

    cfg = C.config(args, corpus__n_train_seqs=n_seqs, **extra)
    stages = C.run_stages(cfg, "annotate")
    section = cfg.cache.model_dump()
    device = resolve_device(section["device"])
    dtype = resolve_compute_dtype(section["compute_dtype"], device)
    model_dir = C.model_dir_of(stages)
    shards = sorted((stages["annotate"]["path"] / "train").glob("*.parquet"))
    bs = section["batch_size"]
    batches = []
    for shard in shards:  # the stage batches shard by shard: same cuts here
        ids = np.asarray(pq.read_table(shard, columns=["input_ids"]).column("input_ids").to_pylist(), dtype=np.int64)
        batches += [torch.from_numpy(ids[i : i + bs]).to(device) for i in range(0, len(ids), bs)]
    n_tokens = sum(b.numel() for b in batches)
    C.log(f"teacher {model_dir.name}, {len(batches)} batches of {bs}, {n_tokens} tokens, dtype {dtype}")
    model = load_causal_lm(model_dir, dtype=dtype, device=device)

    def bare() -> None:
        with torch.inference_mode():
            for b in batches:
                model(input_ids=b).logits  # noqa: B018 - the forward is the work

    # Wrap the stage's two per-token functions to split the stage's time (the wrapped functions run unchanged).
    inner: dict[str, float] = {"loop": 0.0}
    # Per shard: TeacherPass.cache -> pass_mod.cache_shard_and_sample (looked up at call time); then the stage's merge.
    real_cache_shard, real_write_reservoir = pass_mod.cache_shard_and_sample, stage_mod.write_reservoir

    def timed(fn):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                inner["loop"] += time.perf_counter() - t0

        return wrapper

    pass_mod.cache_shard_and_sample, stage_mod.write_reservoir = timed(real_cache_shard), timed(real_write_reservoir)
    loops: list[float] = []
    inline_loops: list[float] = []
    home, tracking_cfg = str(cfg.home_path), cfg.tracking.model_dump()
    upstream = {"teacher": stages["teacher"]["key"], "annotate": stages["annotate"]["key"]}

    real_shard = pass_mod.cache_shard

    def stage(overlap: bool = True) -> None:
        inner["loop"] = 0.0
        pass_mod.cache_shard = real_shard if overlap else functools.partial(real_shard, overlap=False)
        try:
            # A nonce in the section gives a fresh artifact key (the stage never reads it): a real compute, no reuse.
            res = stage_mod.cache_teacher_outputs.fn(
                {**section, "bench_nonce": uuid.uuid4().hex}, upstream, home, tracking_cfg, None
            )
        finally:
            pass_mod.cache_shard = real_shard
        (loops if overlap else inline_loops).append(inner["loop"])
        shutil.rmtree(res["path"], ignore_errors=True)

    # Warm-up: one bare batch (the stage's first call pays for nothing the bench has not already imported).
    with torch.inference_mode():
        model(input_ids=batches[0]).logits  # noqa: B018
    variants = {"bare_forward": bare, "cache_stage": stage, "cache_stage_inline": lambda: stage(overlap=False)}
    times = C.interleave(variants, repeats, warmup=0)
    t_bare, t_stage = C.median(times["bare_forward"]), C.median(times["cache_stage"])
    t_loop = C.median(loops)
    ratio = t_stage / t_bare
    C.result(
        "teacher_cache_overhead" + ("_1b" if args.teacher_shape == "1b" else ""),
        ratio,
        "<=",
        1.05,
        {
            "teacher": str(model_dir),
            "teacher_shape": args.teacher_shape,
            "teacher_params": sum(p.numel() for p in model.parameters()),
            "dtype": dtype,
            "batch_size": bs,
            "batches": len(batches),
            "tokens": n_tokens,
            "repeats": repeats,
            "bare_forward_s": times["bare_forward"],
            "cache_stage_s": times["cache_stage"],
            "stage_loop_s": loops,
            "loop_ratio": t_loop / t_bare,
            "cache_stage_inline_s": times["cache_stage_inline"],
            "inline_ratio": C.median(times["cache_stage_inline"]) / t_bare,
            "inline_loop_ratio": C.median(inline_loops) / t_bare,
            "fixed_overhead_s": t_stage - t_loop,
            "bare_tokens_per_s": n_tokens / t_bare,
            "stage_tokens_per_s": n_tokens / t_stage,
        },
    )


if __name__ == "__main__":
    main()
