"""GPU check (issue 14, item 5): teacher pass, training steps and faiss k-means on one CUDA device, one JSON.

    bash bench/gpu_check.sh                      # on a CUDA machine: bootstraps .venv-gpu, then runs this (<= 8 min)
    python bench/gpu_check.py --out gpu.json     # this part alone, in an environment that has the project
    python bench/gpu_check.py --device cpu --tiny --out x.json   # CPU smoke run of every part (tests)

Without CUDA (and without ``--device cpu``) it writes ``{"gpu": false, ...}`` at once and exits 0: the CPU
figures of bench/README.md stand. Parts, in this order, each skipped with a note once ``--budget`` runs short
(the JSON is rewritten after every part, so a killed run keeps what it measured):

* ``teacher_pass``: the real ``dskd.teacher.cache.cache_shard_and_sample`` (forward, top-k, logsumexp, hidden
  states to the host, reservoir, Parquet) over annotated-format shards vs a bare ``model(input_ids).logits`` loop
  over the same batches, bf16, interleaved repeats, at the pipeline's batch size and a GPU-sized one;
* ``train_default`` / ``train_1b``: ``dskd.train.loop.TrainStep`` (the workers' step: DSKD loss, bf16 autocast,
  AdamW, clipping) for the embedded default's student and for a random 1B-class Llama of the teacher's vocabulary,
  tokens/s, MFU (formula in the JSON) and ``torch.cuda.max_memory_allocated``;
* ``kmeans``: ``dskd.senses.dictionary.build_sense_table`` with faiss on the GPU vs on the CPU (one thread, as
  the sense-index stage runs it) over the reservoir the teacher pass just built (random data of the same shape
  when that part did not run: the JSON says which).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import _common as C
import _gpu_parts as P
import _gpu_train

T0 = time.monotonic()


RUNNERS = {
    "teacher_pass": P.teacher_pass,
    "train_default": lambda ctx: _gpu_train.train(ctx, "default"),
    "train_1b": lambda ctx: _gpu_train.train(ctx, "1b"),
    "kmeans": P.kmeans,
}


def default_out() -> Path:
    """$OUT/gpu_check.json on the device machine, else the bench home's gpu_check.json."""
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / "gpu_check.json"
    return Path(os.environ.get("DSKD_BENCH_HOME", C.DEFAULT_HOME)) / "gpu_check.json"


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Atomic rewrite: a run killed mid-write leaves the previous complete JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    os.replace(tmp, path)


def cuda_state() -> tuple[bool, str]:
    """(CUDA usable, why not / the device's name), importing nothing but torch."""
    try:
        import torch
    except ImportError as err:
        return False, f"torch not importable ({err})"
    if not torch.cuda.is_available():
        build = torch.version.cuda or "a CPU-only build"
        return False, f"torch {torch.__version__} ({build}) sees no CUDA device"
    return True, torch.cuda.get_device_name(0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None, help="JSON path (default $OUT/gpu_check.json or the bench home)")
    p.add_argument("--budget", type=float, default=420.0, help="seconds for all parts (default 420)")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto", help="cpu: smoke run, tests only")
    p.add_argument("--tiny", action="store_true", help="seconds-scale sizes (random tiny models)")
    p.add_argument("--teacher", type=Path, default=None, help="a local HF teacher dir (default: the embedded one)")
    p.add_argument("--home", type=Path, default=None, help="bench home (the converted teacher is kept there)")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak for MFU (default: by GPU name)")
    p.add_argument("--only", nargs="*", default=None, choices=P.PARTS, help="parts to run (default: all)")
    args = p.parse_args()
    out = (args.out or default_out()).expanduser().resolve()
    home = (args.home or Path(os.environ.get("DSKD_BENCH_HOME", C.DEFAULT_HOME))).expanduser().resolve()
    ok, name = cuda_state()
    doc: dict[str, Any] = {
        "gpu": ok and args.device != "cpu",
        "device": name if ok and args.device != "cpu" else "cpu",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "budget_s": args.budget,
        "tiny": args.tiny,
        "argv": sys.argv[1:],
        "install": os.environ.get("DSKD_GPU_INSTALL_NOTE", ""),
    }
    if args.device == "cuda" and not ok:
        print(f"gpu_check: --device cuda but {name}; run bench/gpu_check.sh on a CUDA machine", file=sys.stderr)
        return 2
    if args.device == "auto" and not ok:
        doc["reason"] = f"{name}: the CPU figures in bench/README.md stand"
        doc["parts"] = {}
        write_json(out, doc)
        print(f"gpu_check: no GPU ({name}); wrote {out}")
        return 0
    if args.device == "cpu":
        doc["reason"] = "CPU smoke run (--device cpu): code paths only, figures are not GPU figures"
    device = "cpu" if args.device == "cpu" else "cuda"
    ctx = P.Context(device, args.tiny, home, T0 + args.budget, args.peak_tflops, args.teacher)
    doc["parts"] = {}
    with tempfile.TemporaryDirectory(prefix="dskd-gpu-check-") as tmp:
        ctx.tmp = Path(tmp)
        for part in args.only or P.PARTS:
            left = ctx.deadline - time.monotonic()
            need = P.MIN_SECONDS[part] * (0.1 if args.tiny else 1)
            if left < need:
                doc["parts"][part] = {"status": "skipped", "note": f"time budget: {left:.0f} s left, needs ~{need} s"}
                continue
            t0 = time.monotonic()
            print(f"[{time.strftime('%H:%M:%S')}] {part} ({left:.0f} s left)", file=sys.stderr, flush=True)
            try:
                entry = RUNNERS[part](ctx)
            except Exception as err:  # one broken part must not lose the others' figures
                note = f"{type(err).__name__}: {err}"[:500]
                entry = {"status": "error", "note": note, "traceback": traceback.format_exc()}
            entry["seconds"] = round(time.monotonic() - t0, 1)
            doc["parts"][part] = entry
            doc["elapsed_s"] = round(time.monotonic() - T0, 1)
            doc["teacher"] = ctx.teacher_info
            write_json(out, doc)
            print(f"    {part}: {entry['status']} {entry.get('summary', entry.get('note', ''))}", file=sys.stderr)
    doc["elapsed_s"] = round(time.monotonic() - T0, 1)
    write_json(out, doc)
    print(f"gpu_check: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
