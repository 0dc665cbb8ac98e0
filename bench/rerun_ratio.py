"""Unchanged rerun of the whole flow / its first run (target <= 0.10).

Runs the real CLI (``.venv/bin/dskd run key=value ...``: Prefect flow, every stage, Ray Train, MLflow, registry)
twice in subprocesses on a small config with its own fresh home dir, timing both wall clocks; the second run must
be a cache hit for every stage (checked from its stage table). The teacher is the bench's HF dir via
``teacher.path`` (so the first run does not include the one-off GGUF conversion). The details also give the time of
a bare ``import flows.dskd_pipeline`` in a fresh interpreter, the floor under any rerun.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import _common as C

SMALL = {
    "default": {
        "corpus.seq_len": 64,
        "corpus.n_train_seqs": 16,
        "corpus.n_heldout_seqs": 4,
        "corpus.shard_seqs": 8,
        "cache.batch_size": 8,
        "student.n_layers": 2,
        "student.n_trainable_layers": 1,
        "train.num_workers": 1,
        "train.batch_size": 4,
        "train.epochs": 1,
        "train.max_steps": 2,
        "eval.max_seqs": 4,
        "eval.tasks": "[arc_easy]",
        "eval.limit": 8,
        "eval.num_fewshot": 1,
        "eval.probe_items": 10,
    },
    "tiny": {
        "corpus.seq_len": 32,
        "corpus.n_train_seqs": 4,
        "corpus.n_heldout_seqs": 2,
        "corpus.shard_seqs": 4,
        "cache.batch_size": 4,
        "student.n_layers": 2,
        "student.n_trainable_layers": 1,
        "train.num_workers": 1,
        "train.batch_size": 2,
        "train.epochs": 1,
        "train.max_steps": 1,
        "eval.max_seqs": 2,
        "eval.tasks": "[]",
        "eval.probe_items": 0,
    },
}


def stage_table(stdout: str) -> dict[str, tuple[str, float | None]]:
    """{stage: (status, seconds)} from the stage table `dskd run` prints."""
    out = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) >= 3 and cells[1] in ("cached", "computed"):
            try:
                seconds = float(cells[2])
            except ValueError:
                seconds = None
            out[cells[0]] = (cells[1], seconds)
    return out


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--keep", action="store_true", help="keep the run's home dir")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per flow run")
    args = p.parse_args()
    C.setup(args)

    teacher = C.teacher_path(args)
    run_home = args.home / f"rerun-{args.profile}-{uuid.uuid4().hex[:8]}"
    tmp = C.short_tmp("rerun")  # the run's TMPDIR: Ray's sockets and the workers' checkpoint scratch dirs
    overrides = [f"home={run_home}", f"teacher.path={teacher}"] + [f"{k}={v}" for k, v in SMALL[args.profile].items()]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DSKD_", "PREFECT_", "MLFLOW_", "RAY_"))}
    env.update(DSKD_HOME=str(run_home), TMPDIR=str(tmp))
    dskd = Path(sys.executable).parent / "dskd"
    cmd = [str(dskd), "run", *overrides]
    walls, outputs = [], []
    leaked: dict = {}
    try:
        for i in (1, 2):
            C.log(f"flow run {i}: {' '.join(cmd[1:])}")
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout, cwd=C.REPO)
            walls.append(time.perf_counter() - t0)
            outputs.append(proc.stdout)
            C.log(f"flow run {i}: exit {proc.returncode} in {walls[-1]:.1f} s")
            if proc.returncode != 0:
                sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
                raise SystemExit(f"flow run {i} failed (exit {proc.returncode})")
        floor = None
        if not args.tiny:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import flows.dskd_pipeline"], env=env, check=True, cwd=C.REPO)
            floor = time.perf_counter() - t0
    finally:
        leaked = C.leaked_checkpoints(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(run_home, ignore_errors=True)
    tables = [stage_table(out) for out in outputs]
    recomputed = [stage for stage, (status, _) in tables[1].items() if status != "cached"]
    for i, out in enumerate(outputs, 1):
        print(f"--- flow run {i}\n{out}", file=sys.stderr)
    C.result(
        "rerun_ratio",
        walls[1] / walls[0],
        "<=",
        0.10,
        {
            "config": overrides[1:],
            "first_run_s": walls[0],
            "rerun_s": walls[1],
            "rerun_all_cached": not recomputed and len(tables[1]) >= 8,
            "recomputed_stages": recomputed,
            "first_run_stage_s": {stage: sec for stage, (_, sec) in tables[0].items()},
            "rerun_stage_s": {stage: sec for stage, (_, sec) in tables[1].items()},
            "import_floor_s": floor,
            **leaked,
        },
    )


if __name__ == "__main__":
    main()
