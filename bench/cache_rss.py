"""Peak RSS of the teacher-cache stage at 10x the corpus / at 1x (target <= 1.2).

Each size runs in a fresh child process that runs the real stage task ``cache_teacher_outputs.fn`` (fresh artifact
key, deleted afterwards) on an annotated corpus of N (resp. 10 N) sequences built by the real annotate stage. The
figure is the child's peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``: the whole process, imports and model
included, as the stage runs in a flow); the parent also samples the child's RSS with psutil as a cross-check. The
details give the stage's own growth (peak minus the RSS just before the stage starts) and the reservoir's size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import _common as C


def child(args) -> None:
    import resource
    import shutil
    import uuid

    import psutil

    from tasks.cache_teacher_outputs import cache_teacher_outputs

    cfg = C.config(args, corpus__n_train_seqs=args.seqs)
    stages = C.run_stages(cfg, "annotate")
    upstream = {"teacher": stages["teacher"]["key"], "annotate": stages["annotate"]["key"]}
    before = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    res = cache_teacher_outputs.fn(
        {**cfg.cache.model_dump(), "bench_nonce": uuid.uuid4().hex},
        upstream,
        str(cfg.home_path),
        cfg.tracking.model_dump(),
        None,
    )
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    manifest = json.loads((Path(res["path"]) / "manifest.json").read_text())
    shutil.rmtree(res["path"], ignore_errors=True)
    out = {"seqs": args.seqs, "rss_before_stage": before, "peak_rss": peak, "seconds": seconds, **manifest["metrics"]}
    print("CHILD " + json.dumps(out), flush=True)


def run_child(args, seqs: int) -> dict:
    import psutil

    cmd = [sys.executable, __file__, "--child", "--seqs", str(seqs), "--home", str(args.home)]
    if args.tiny:
        cmd.append("--tiny")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=C.REPO)
    sampled = 0
    ps = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            sampled = max(sampled, ps.memory_info().rss)
        except psutil.Error:
            break
        time.sleep(0.2)
    stdout, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"child for {seqs} sequences failed (exit {proc.returncode})")
    line = [ln for ln in stdout.splitlines() if ln.startswith("CHILD ")][-1]
    return {**json.loads(line[len("CHILD ") :]), "sampled_peak_rss": sampled}


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--seqs", type=int, default=None, help="sequences at 1x (default 32, tiny 4)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    C.setup(args)
    args.seqs = args.seqs or (4 if args.tiny else 32)
    if args.child:
        child(args)
        return
    # Build the annotated corpora (and the lexicon, teacher) once here, so the children only run the stage.
    for n in (args.seqs, 10 * args.seqs):
        C.run_stages(C.config(args, corpus__n_train_seqs=n), "annotate")
    one = run_child(args, args.seqs)
    C.log(f"1x ({args.seqs} seqs): peak RSS {one['peak_rss'] / 2**20:.0f} MiB in {one['seconds']:.1f} s")
    ten = run_child(args, 10 * args.seqs)
    C.log(f"10x ({10 * args.seqs} seqs): peak RSS {ten['peak_rss'] / 2**20:.0f} MiB in {ten['seconds']:.1f} s")
    mib = 2**20
    C.result(
        "cache_rss_10x_over_1x",
        ten["peak_rss"] / one["peak_rss"],
        "<=",
        1.2,
        {
            "seqs_1x": args.seqs,
            "seqs_10x": 10 * args.seqs,
            "peak_rss_mib": [one["peak_rss"] / mib, ten["peak_rss"] / mib],
            "sampled_peak_rss_mib": [one["sampled_peak_rss"] / mib, ten["sampled_peak_rss"] / mib],
            "rss_before_stage_mib": [one["rss_before_stage"] / mib, ten["rss_before_stage"] / mib],
            "stage_growth_mib": [(r["peak_rss"] - r["rss_before_stage"]) / mib for r in (one, ten)],
            "reservoir_tokens": [one["reservoir_tokens"], ten["reservoir_tokens"]],
            "reservoir_bytes_on_disk": [one["reservoir_bytes"], ten["reservoir_bytes"]],
            "stage_seconds": [one["seconds"], ten["seconds"]],
        },
    )


if __name__ == "__main__":
    main()
