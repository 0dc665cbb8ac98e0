"""Ray Train tokens/s with 2 workers / 1 worker, 1 thread each (target >= 1.6).

Each run is the pipeline's own launch, ``tasks.ray_train.fit`` (TorchTrainer, ScalingConfig(num_workers, CPU:1 per
worker), DDP over gloo, ``dskd.train.loop.run_training`` on every worker) on the bench's cached artifacts, with
``train.threads_per_worker=1``. To time steps, fit's per-worker entry point is swapped for one that differs from
``tasks.ray_train.train_loop_per_worker`` only by passing run_training an ``on_step`` hook that stamps the wall
clock on rank 0. Throughput = global tokens (workers x batch x seq_len per step) over the stamped time of the
steps after the warm-up; worker-group start-up and the final save are excluded. 1- and 2-worker runs alternate.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import _common as C


def make_loop(stamp_file: str):
    """train_loop_per_worker + an on_step timestamp hook (rank 0 writes the stamps)."""

    def loop(config: dict) -> None:
        from dskd.train.loop import TrainJob, run_training
        from tasks.ray_train import RayWorkerContext

        ctx = RayWorkerContext(config.get("tracking_uri"), config.get("mlflow_run_id"))
        stamps: list[float] = []
        run_training(TrainJob(**config["job"]), ctx, on_step=lambda _step: stamps.append(time.perf_counter()))
        if ctx.rank == 0:
            Path(stamp_file).write_text(json.dumps(stamps))

    return loop


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=None, help="(1 worker, 2 workers) pairs (default 2, tiny 1)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per run after 1 warm-up (default 3, tiny 1)")
    args = p.parse_args()
    C.setup(args)
    rounds = args.rounds or (1 if args.tiny else 2)
    steps = args.steps or (1 if args.tiny else 3)
    warmup = 1
    # A short private TMPDIR for Ray's sockets and for the workers' checkpoint scratch dirs (removed at the end).
    tmp = C.short_tmp("ray")
    os.environ["TMPDIR"] = str(tmp)
    tempfile.tempdir = None

    import ray

    import tasks.ray_train as rt
    from dskd.train.loop import TrainJob

    cfg = C.config(args)
    stages = C.run_stages(cfg, "sense_index")
    capture = json.loads((stages["teacher_cache"]["path"] / "capture.json").read_text())
    job = TrainJob(
        teacher_dir=str(C.model_dir_of(stages)),
        annotate_dir=str(stages["annotate"]["path"]),
        cache_dir=str(stages["teacher_cache"]["path"]),
        index_dir=str(stages["sense_index"]["path"]),
        kd_temperature=capture["kd_temperature"],
        student={**cfg.student.model_dump(), "layers": "first"},
        train=cfg.train.model_dump(),
        kappa=cfg.senses.kappa,
    )
    B, L = cfg.train.batch_size, cfg.corpus.seq_len
    storage = args.home / "ray_results"
    started = rt.init_ray(None, 2, args.home / "ray")
    runs: dict[int, list[float]] = {1: [], 2: []}
    leaked: dict = {}
    try:
        for r in range(rounds):
            for workers in (1, 2) if r % 2 == 0 else (2, 1):
                train_cfg = {
                    **cfg.train.model_dump(),
                    "num_workers": workers,
                    "threads_per_worker": 1,
                    "max_steps": warmup + steps,
                    "checkpoint_every": 10**6,
                    "use_gpu": False,
                }
                job.train = train_cfg
                stamp_file = tmp / f"stamps-{uuid.uuid4().hex[:8]}.json"
                rt.train_loop_per_worker = make_loop(str(stamp_file))
                name = f"bench-{uuid.uuid4().hex[:8]}"
                t0 = time.perf_counter()
                rt.fit(job, train_cfg, str(storage.resolve()), None, None, run_name=name)
                wall = time.perf_counter() - t0
                shutil.rmtree(storage / name, ignore_errors=True)
                stamps = json.loads(stamp_file.read_text())
                timed = stamps[warmup:]
                tps = len(timed) * workers * B * L / (stamps[-1] - stamps[warmup - 1])
                runs[workers].append(tps)
                C.log(f"round {r + 1}: {workers} worker(s): {tps:.1f} tokens/s ({len(timed)} steps; fit {wall:.1f} s)")
    finally:
        if started:
            ray.shutdown()
        leaked = C.leaked_checkpoints(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    t1, t2 = C.median(runs[1]), C.median(runs[2])
    C.result(
        "ray_scaling_2w_over_1w",
        t2 / t1,
        ">=",
        1.6,
        {
            "tokens_per_s_1_worker": runs[1],
            "tokens_per_s_2_workers": runs[2],
            "batch_per_worker": B,
            "seq_len": L,
            "timed_steps": steps,
            "warmup_steps": warmup,
            "rounds": rounds,
            "student_layers": cfg.student.n_layers,
            "trainable_layers": cfg.student.n_trainable_layers,
            "threads_per_worker": 1,
            **leaked,
        },
    )


if __name__ == "__main__":
    main()
