"""Ray Train tokens/s with 2 workers / 1 worker, 1 thread each (target >= 1.8, and a figure that holds still).

Each run is the pipeline's own launch, ``tasks.ray_train.fit`` (TorchTrainer, ScalingConfig(num_workers, CPU:1 per
worker), DDP over gloo, ``dskd.train.loop.run_training`` on every worker) on the bench's cached artifacts, with
``train.threads_per_worker=1``. To time steps, fit's per-worker entry point is swapped for one that differs from
``tasks.ray_train.train_loop_per_worker`` only by passing run_training an ``on_step`` hook that stamps the wall
clock on rank 0; worker-group start-up, the warm-up steps and the final save are outside the timed steps.

Method (why: 3 timed steps gave 2.14, an impossible figure, i.e. noise):

* rounds alternate the arm order (1, 2), (2, 1), (1, 2), ... so slow drift of the machine hits both arms alike;
* every round runs ``--warmup`` untimed steps, then ``--steps`` timed ones; each timed step gives one throughput
  sample, global tokens (workers x batch x seq_len) / that step's seconds; the default is 3 rounds x 10 steps =
  30 timed steps per arm (epochs are lifted so the small bench corpus never ends a run early); 3 warm-up steps,
  because the 2-worker arm's third step ran 27-43 % below its run's median in all 8 rounds of 2026-12-07 (the
  1-worker arm's did not), so 2 warm-up steps let a start-up step into the timed ones;
* figure = median step throughput of the 2-worker arm / that of the 1-worker arm; its spread: the quartiles and
  min/max of each arm, the per-round ratios (min/max) and a bootstrap 95 % interval of the ratio (steps resampled
  within each arm, 2,000 draws, seed 0);
* sanity: 2 workers cannot do more than twice the work of 1, so a ratio above 2.0 (or a bootstrap interval wider
  than +-10 %) is flagged as noise and fails, whatever its value.
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

TARGET = 1.8
IMPOSSIBLE = 2.0  # 2 workers / 1 above this is not a measurement
MAX_HALF_WIDTH = 0.10  # bootstrap interval half-width (relative) above which the figure is called unsettled


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


def step_throughputs(stamps: list[float], warmup: int, tokens_per_step: int) -> list[float]:
    """Tokens/s of each step after the first ``warmup`` (step i lasts from stamp i-1 to stamp i)."""
    if len(stamps) <= warmup or warmup < 1:
        raise ValueError(f"{len(stamps)} step stamps for {warmup} warm-up steps: raise --steps or the corpus")
    return [tokens_per_step / (b - a) for a, b in zip(stamps[warmup - 1 : -1], stamps[warmup:], strict=True)]


def bootstrap_ratio(one: list[float], two: list[float], draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % interval of median(two) / median(one), resampling each arm's steps with replacement."""
    import numpy as np

    rng = np.random.default_rng(seed)
    a, b = np.asarray(one), np.asarray(two)
    ra = np.median(a[rng.integers(0, a.size, (draws, a.size))], axis=1)
    rb = np.median(b[rng.integers(0, b.size, (draws, b.size))], axis=1)
    lo, hi = np.quantile(rb / ra, [0.025, 0.975])
    return float(lo), float(hi)


def verdict(ratio: float, interval: tuple[float, float]) -> str:
    """'noise' (impossible or too wide to read), else 'measured'."""
    half_width = (interval[1] - interval[0]) / 2 / ratio
    return "noise" if ratio > IMPOSSIBLE or half_width > MAX_HALF_WIDTH else "measured"


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=None, help="rounds, each one run per arm (default 3, tiny 1)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per run (default 10, tiny 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per run first (default 3, tiny 1)")
    C.add_set_option(p, ("train.",), "e.g. --set train.grad_allreduce=bf16 --set train.grad_accum=2")
    args = p.parse_args()
    C.setup(args)
    sets = C.parse_sets(args.sets, ("train.",))
    rounds = args.rounds or (1 if args.tiny else 3)
    steps = args.steps or (2 if args.tiny else 10)
    warmup = args.warmup or (1 if args.tiny else 3)
    if rounds * steps < 30 and not args.tiny:
        C.log(f"warning: {rounds * steps} timed steps per arm (< 30): the figure will not hold still")
    # A short private TMPDIR for Ray's sockets and for the workers' checkpoint scratch dirs (removed at the end).
    tmp = C.short_tmp("ray")
    os.environ["TMPDIR"] = str(tmp)
    tempfile.tempdir = None

    import ray

    import tasks.ray_train as rt
    from dskd.train.loop import TrainJob

    cfg = C.config(args, **{k.replace(".", "__"): v for k, v in sets.items()})
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
    # Tokens per optimizer step and worker: grad_accum micro-batches of batch_size sequences (one all-reduce).
    B, L = cfg.train.batch_size * cfg.train.grad_accum, cfg.corpus.seq_len
    storage = args.home / "ray_results"
    started = rt.init_ray(None, 2, args.home / "ray")
    samples: dict[int, list[float]] = {1: [], 2: []}
    per_round: list[dict] = []
    leaked: dict = {}
    try:
        for r in range(rounds):
            entry: dict = {"round": r + 1, "loadavg_1m_before": C.loadavg()}
            for workers in (1, 2) if r % 2 == 0 else (2, 1):
                train_cfg = {
                    **cfg.train.model_dump(),
                    "num_workers": workers,
                    "threads_per_worker": 1,
                    "max_steps": warmup + steps,
                    "epochs": 10**6,  # max_steps ends the run; a small corpus must not end it first
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
                tps = step_throughputs(json.loads(stamp_file.read_text()), warmup, workers * B * L)
                samples[workers] += tps
                entry[f"tokens_per_s_{workers}w"] = tps
                C.log(
                    f"round {r + 1}: {workers} worker(s): median {C.median(tps):.1f} tokens/s "
                    f"({len(tps)} steps, {min(tps):.1f}-{max(tps):.1f}; fit {wall:.1f} s)"
                )
            entry["ratio"] = C.median(entry["tokens_per_s_2w"]) / C.median(entry["tokens_per_s_1w"])
            entry["loadavg_1m_after"] = C.loadavg()
            per_round.append(entry)
    finally:
        if started:
            ray.shutdown()
        leaked = C.leaked_checkpoints(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    t1, t2 = C.median(samples[1]), C.median(samples[2])
    ratio = t2 / t1
    interval = bootstrap_ratio(samples[1], samples[2])
    state = verdict(ratio, interval)
    round_ratios = [e["ratio"] for e in per_round]
    C.log(
        f"2 workers / 1 = {ratio:.3f} (95 % bootstrap {interval[0]:.3f}-{interval[1]:.3f}; rounds "
        f"{min(round_ratios):.3f}-{max(round_ratios):.3f}): {state}"
    )
    C.result(
        "ray_scaling_2w_over_1w",
        ratio,
        ">=",
        TARGET,
        {
            "verdict": state,
            "ratio_bootstrap_95": interval,
            "ratio_rounds_min_max": [min(round_ratios), max(round_ratios)],
            "arm_1_worker": C.spread(samples[1]),
            "arm_2_workers": C.spread(samples[2]),
            "rounds_detail": per_round,
            "method": "median per-step tokens/s, 2-worker arm / 1-worker arm; rounds alternate the arm order",
            "overrides": sets,
            "batch_per_worker": cfg.train.batch_size,
            "grad_accum": cfg.train.grad_accum,
            "grad_allreduce": cfg.train.grad_allreduce,
            "seq_len": L,
            "timed_steps_per_run": steps,
            "timed_steps_per_arm": rounds * steps,
            "warmup_steps": warmup,
            "rounds": rounds,
            "student_layers": cfg.student.n_layers,
            "trainable_layers": cfg.student.n_trainable_layers,
            "threads_per_worker": 1,
            **leaked,
        },
        valid=state == "measured",
    )


if __name__ == "__main__":
    main()
