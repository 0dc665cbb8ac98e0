"""Held-out perplexity the default student reaches per training minute (target: <= 2x the teacher's ppl).

Trains the pipeline's student (its config: block-influence layers, all trainable, clipping, the cached KD signal)
in one process on the bench's cached stages with ``dskd.train.loop.run_training`` — the loop the Ray workers run —
and evaluates held-out perplexity every ``--every`` steps, so each change to the training path shows what it buys:
the curve (step, training seconds, ppl) is in DETAILS, the RESULT is final ppl / teacher ppl. Training seconds are
the loop's step times (evaluation excluded). One seed: the run-to-run spread is in README / bench/README.md.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import _common as C

SETTABLE = ("train.", "cache.")

PIPELINE_DEFAULT = {
    "corpus__n_train_seqs": 768,
    "corpus__n_heldout_seqs": 32,
    "corpus__shard_seqs": 64,
    "train__batch_size": 8,
}


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=96, help="optimizer steps (default 96; --tiny: 4)")
    p.add_argument("--every", type=int, default=16, help="evaluate every N steps")
    p.add_argument("--loss", default="kd", choices=["ce", "kd", "dskd"])
    C.add_set_option(
        p, SETTABLE, "a cache one rebuilds the cache; e.g. --set train.ce_weight=0 --set cache.kd_mode=sampled"
    )
    args = p.parse_args()
    C.setup(args)
    steps, every = (4, 2) if args.tiny else (args.steps, args.every)
    # The embedded default's corpus slice and global batch (2 workers x 4 = one process x 8); --tiny: the tiny
    # teacher's 4 layers, keep the first 2.
    extra = {"student__layers": "first"} if args.tiny else PIPELINE_DEFAULT
    # --set goes through the config like any override, so pydantic checks it (a typo is a one-line error).
    sets = C.parse_sets(args.sets, SETTABLE)
    cfg = C.config(args, **extra, **{k.replace(".", "__"): v for k, v in sets.items()})
    stages = C.run_stages(cfg, upto="sense_index")

    import torch

    from dskd.data.annotate import read_sequences
    from dskd.eval.evaluation import heldout_metrics
    from dskd.teacher.model import load_causal_lm
    from dskd.train.loop import TrainJob, run_training
    from dskd.train.student import build_student_from_section, resolve_layers

    teacher_dir = C.model_dir_of(stages)
    cache_dir = stages["teacher_cache"]["path"]
    capture = json.loads((cache_dir / "capture.json").read_text())
    student = resolve_layers(cfg.student.model_dump(), teacher_dir, cache_dir)
    train = {
        **cfg.train.model_dump(),
        "loss": args.loss,
        # One process stands in for the pipeline's workers: the loop scales lr by world size, so give it the total.
        "lr": cfg.train.lr * cfg.train.num_workers,
        "max_steps": steps,
        "epochs": 100,  # max_steps decides
        "threads_per_worker": 2,
        "checkpoint_every": 10**9,
    }
    heldout = read_sequences(sorted((stages["annotate"]["path"] / "heldout").glob("*.parquet")))
    teacher_ppl = heldout_metrics(load_causal_lm(teacher_dir), heldout)["heldout_perplexity"]
    init_ppl = heldout_metrics(build_student_from_section(teacher_dir, student), heldout)["heldout_perplexity"]
    C.log(f"teacher ppl {teacher_ppl:.2f}; untrained student ppl {init_ppl:.1f}; layers {student['layers']}")

    class Ctx(C.LocalContext):
        model = None
        train_seconds = 0.0

        def prepare_model(self, model):
            from dskd.train.forward import language_model

            self.model = language_model(model)  # the HF student inside the loop's training forward
            return model

        def log_metrics(self, metrics, step) -> None:
            self.train_seconds += metrics["step_seconds"]

    with tempfile.TemporaryDirectory(dir=args.home) as scratch:
        ctx = Ctx(Path(scratch))
        curve = [{"step": 0, "train_seconds": 0.0, "ppl": init_ppl}]

        def on_step(step: int) -> None:
            if step % every == 0 or step == steps:
                ppl = heldout_metrics(ctx.model, heldout)["heldout_perplexity"]
                ctx.model.train()
                curve.append({"step": step, "train_seconds": round(ctx.train_seconds, 1), "ppl": round(ppl, 2)})
                C.log(f"step {step}: {ctx.train_seconds:.0f} s of training, held-out ppl {ppl:.2f}")

        job = TrainJob(
            str(teacher_dir),
            str(stages["annotate"]["path"]),
            str(cache_dir),
            str(stages["sense_index"]["path"]),
            capture["kd_temperature"],
            student,
            train,
            cfg.senses.kappa,
            kd_mode=capture.get("kd_mode", "topk"),
        )
        t0 = time.perf_counter()
        run_training(job, ctx, on_step)
        wall = time.perf_counter() - t0
        # What the pipeline registers: the final student is saved in bf16 (train loop's _finish). The model is not
        # used after this, so it is rounded in place rather than copied.
        ctx.model.to(torch.bfloat16).to(torch.float32)
        saved_ppl = heldout_metrics(ctx.model, heldout)["heldout_perplexity"]
        C.log(f"after a bf16 round trip (as saved): held-out ppl {saved_ppl:.2f}")
    ratio = curve[-1]["ppl"] / teacher_ppl
    details = {
        "teacher_ppl": teacher_ppl,
        "curve": curve,
        "loss": args.loss,
        "overrides": sets,
        "kd_mode": capture.get("kd_mode", "topk"),
        "kd_temperature": capture["kd_temperature"],
        "topk": capture["topk"],
        "batch_sequences": cfg.train.batch_size,
        "lr_total": train["lr"],
        "wall_seconds": round(wall, 1),
        "ppl_after_bf16_save": round(saved_ppl, 2),
    }
    print("DETAILS " + json.dumps(details))
    print(f"RESULT measure=student_ppl_over_teacher value={ratio:.4f} target=<=2.0 pass={str(ratio <= 2.0).lower()}")


if __name__ == "__main__":
    main()
