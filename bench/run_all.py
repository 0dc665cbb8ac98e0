"""Run every bench script, collect the RESULT line each prints last, print a table (measure, figure, target, pass).

    .venv/bin/python bench/run_all.py            # the default settings (`make bench`), ~16 min on 2 idle AMX cores
    .venv/bin/python bench/run_all.py --tiny     # seconds-scale smoke run
    .venv/bin/python bench/run_all.py --only logit_bytes hidden_bytes
    .venv/bin/python bench/run_all.py --gpu-json gpu_check.json   # GPU rows from a bench/gpu_check.sh run

Each script's full output goes to <home>/logs/<script>.log; the table and every script's DETAILS line are written to
<home>/results-<profile>.json. The table has two parts: issue 14's rows (every one printed, with its target and
pass/fail, "not measured" when no script measured it this run, "needs GPU" for the GPU rows on a machine without
CUDA) and then every script's RESULT. The GPU rows come from bench/gpu_check.py, run last (it exits at once on a
machine without CUDA), or from ``--gpu-json`` (a JSON brought back from a GPU machine). Exit status 1 if a script
failed or printed no RESULT line (an unmet target is a result, not a failure).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import _common as C

SCRIPTS = [
    "teacher_cache_overhead",
    "logit_bytes",
    "hidden_bytes",
    "dskd_step_overhead",
    "cache_vs_online",
    "kmeans_faiss_vs_sklearn",
    "rerun_ratio",
    "ray_scaling",
    "cache_rss",
    "time_to_quality",
    "integrity_cost",
    "reservoir_memory",
]
# Extra runs of a script with other arguments: run name -> (script, arguments); each runs right after its script.
VARIANTS = {"teacher_cache_overhead_1b": ("teacher_cache_overhead", ["--teacher-shape", "1b"])}
GPU_SCRIPT = "gpu_check"  # writes a JSON, not a RESULT line; run after the others
RESULT_RE = re.compile(
    r"^RESULT measure=(?P<measure>\S+) value=(?P<value>\S+) target=(?P<op><=|>=)(?P<target>\S+) "
    r"pass=(?P<passed>true|false)$"
)
# Issue 14's table: (row, script, RESULT measure, figure format, target as printed, (op, value) the script's RESULT
# must carry). A row without a script prints "not measured".
ISSUE_ROWS = [
    ("hidden-state bytes kept / every position fp16", "hidden_bytes", "hidden_bytes_fraction", "{:.1%}", "<= 10 %",
     ("<=", 0.10)),
    ("logit-cache bytes/token", "logit_bytes", "logit_bytes_per_token", "{:.1f} B", "<= 40 B", ("<=", 40.0)),
    ("teacher-cache stage / bare forward", "teacher_cache_overhead", "teacher_cache_overhead", "{:.3f}", "<= 1.05",
     ("<=", 1.05)),
    ("  same, 1B-class teacher (random Llama-3.2-1B shape)", "teacher_cache_overhead_1b", "teacher_cache_overhead_1b",
     "{:.3f}", "<= 1.05", ("<=", 1.05)),
    ("Ray 2 workers / 1", "ray_scaling", "ray_scaling_2w_over_1w", "{:.3f}", ">= 1.8, stable", (">=", 1.8)),
    ("reservoir memory vs configured budget", "reservoir_memory", "reservoir_memory_over_budget", "{:.2f} x budget",
     "<= budget", ("<=", 1.0)),
]  # fmt: skip
# GPU rows: (row, part of gpu_check's JSON).
GPU_ROWS = [
    ("GPU teacher pass: cache stage / bare forward, bf16", "teacher_pass"),
    ("GPU train step: default student (tok/s, MFU)", "train_default"),
    ("GPU train step: 1B-class Llama, V=49152 (tok/s, MFU)", "train_1b"),
    ("GPU k-means: faiss-gpu / faiss-cpu time", "kmeans"),
]


def parse_result(line: str) -> dict | None:
    """The fields of a RESULT line, or None if ``line`` is not one."""
    m = RESULT_RE.match(line.strip())
    if not m:
        return None
    return {
        "measure": m["measure"],
        "value": float(m["value"]),
        "op": m["op"],
        "target": float(m["target"]),
        "passed": m["passed"] == "true",
    }


def run_script(cmd: list[str], log_path: Path, timeout: int) -> tuple[int, str, float]:
    """Run one script; its stdout+stderr go to ``log_path``. Returns (exit code, stdout, seconds)."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=C.REPO)
        stdout, stderr, code = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as err:
        stdout, stderr, code = err.stdout or "", (err.stderr or "") + "\nTIMEOUT", -1
        stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
        stderr = stderr.decode() if isinstance(stderr, bytes) else stderr
    log_path.write_text(f"$ {' '.join(cmd)}\n--- stdout\n{stdout}\n--- stderr\n{stderr}")
    return code, stdout, time.perf_counter() - t0


def machine_of(details: dict) -> str:
    """'GPU' when the script ran where CUDA was available, else 'CPU' (CPU figures are marked as such)."""
    return "GPU" if (details.get("machine") or {}).get("cuda") else "CPU"


def row_notes(measure: str, details: dict) -> str:
    """The spread/verdict a row's figure comes with, where the script reports one."""
    if measure == "ray_scaling_2w_over_1w" and "ratio_bootstrap_95" in details:
        lo, hi = details["ratio_bootstrap_95"]
        rmin, rmax = details["ratio_rounds_min_max"]
        steps = details.get("timed_steps_per_arm")
        return f"{details['verdict']}; 95% {lo:.2f}-{hi:.2f}, rounds {rmin:.2f}-{rmax:.2f}, {steps} steps/arm"
    if measure.startswith("teacher_cache_overhead") and "loop_ratio" in details:
        return f"loop {details['loop_ratio']:.3f}, {details.get('dtype')}, {details.get('repeats')} repeats"
    if measure == "logit_bytes_per_token" and "best" in details:
        return f"{details['best']} at KL <= 1.01 x {details.get('kl_reference', 'fp16')}"
    return ""


def gpu_row(part: str, gpu: dict | None) -> tuple[str, str, str]:
    """(figure, result, notes) of a GPU row from gpu_check's JSON (None: not run)."""
    if gpu is None:
        return "-", "not measured", "bench/gpu_check.py did not run"
    if not gpu.get("gpu"):
        return "-", "needs GPU", gpu.get("reason", "no CUDA device")
    entry = (gpu.get("parts") or {}).get(part) or {}
    status, summ = entry.get("status", "missing"), entry.get("summary") or {}
    if status != "measured":
        return "-", status, entry.get("note", "")
    where = f"{gpu.get('device', 'GPU')}, {gpu.get('date', '')}"
    if part == "teacher_pass":
        fig = f"{summ['stage_over_bare']:.3f}"
        note = f"{summ['stage_tokens_per_s']:.0f} vs {summ['bare_tokens_per_s']:.0f} tok/s at batch {summ['batch']}"
    elif part.startswith("train"):
        mfu = summ.get("mfu")
        fig = f"{summ['tokens_per_s']:.0f} tok/s" + (f", {mfu:.1%}" if mfu is not None else "")
        peak = summ.get("peak_mem_gib")
        note = (f"peak {peak:.1f} GiB, " if peak is not None else "") + f"batch {summ['batch']}x{summ['seq_len']}"
    else:
        fig = f"{summ['gpu_over_cpu']:.3f}"
        note = f"{summ['data']}; {summ['tokens']} tokens"
    return fig, "measured", f"{note}; {where}"


def print_tables(rows: list[dict], gpu: dict | None) -> list[dict]:
    """Print issue 14's table, then every script's RESULT; returns the issue table as printed (for the JSON)."""
    by_measure = {r["result"]["measure"]: r for r in rows if r["result"]}
    ran = {r["script"]: r for r in rows}
    table = []
    for label, script, measure, fmt, target, expected in ISSUE_ROWS:
        row = by_measure.get(measure) if measure else None
        if row is not None:
            res = row["result"]
            verdict = "pass" if res["passed"] else "fail"
            notes = row_notes(measure, row["details"])
            if expected and (res["op"], res["target"]) != expected:  # a script out of step with the issue's target
                verdict, notes = "fail", f"script's target {res['op']}{res['target']:g} is not the issue's; {notes}"
            entry = [label, fmt.format(res["value"]), target, verdict, machine_of(row["details"]), notes]
        else:
            why = "no script yet" if script is None else "error" if script in ran else "not run (--only)"
            entry = [label, "-", target, "not measured", "-", why]
        table.append(entry)
    for label, part in GPU_ROWS:
        try:
            fig, verdict, note = gpu_row(part, gpu)
        except (KeyError, TypeError, ValueError) as err:  # a JSON from another version of gpu_check
            fig, verdict, note = "-", "error", f"unreadable gpu_check entry: {err!r}"
        if verdict == "needs GPU" and table[-1][3] == "needs GPU":
            note = "(as above)"
        table.append([label, fig, "measured", verdict, "GPU" if verdict == "measured" else "-", note])
    header = ["issue 14 row", "figure", "target", "result", "machine", "notes"]
    widths = [max(len(str(r[i])) for r in [header, *table]) for i in range(5)]
    print("\n" + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)) + "  notes")
    print("-" * (sum(widths) + 2 * 5 + 5))
    for r in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[5])
    header2 = f"{'measure':<28} {'figure':>10} {'target':>8}  {'pass/fail':<9} {'machine':<7} {'seconds':>7}"
    print("\n" + header2 + "\n" + "-" * len(header2))
    for row in rows:
        res = row["result"]
        if res is None:
            print(f"{row['script']:<28} {'-':>10} {'-':>8}  {'ERROR':<9} {'-':<7} {row['seconds']:>7.0f}")
        else:
            target = f"{res['op']}{res['target']:g}"
            verdict = "pass" if res["passed"] else "fail"
            where = machine_of(row["details"])
            print(
                f"{res['measure']:<28} {res['value']:>10.4g} {target:>8}  {verdict:<9} {where:<7} "
                f"{row['seconds']:>7.0f}"
            )
    return [dict(zip(header, r, strict=True)) for r in table]


def runs() -> list[tuple[str, str, list[str]]]:
    """(run name, script, extra arguments) in run order: every script, each followed by its VARIANTS."""
    out = []
    for script in SCRIPTS:
        out.append((script, script, []))
        out += [(name, s, extra) for name, (s, extra) in VARIANTS.items() if s == script]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="run every script with --tiny")
    p.add_argument("--home", type=Path, default=None, help="bench home passed to every script")
    p.add_argument(
        "--only", nargs="*", default=None, help="script or variant names to run (default: all; none: only the table)"
    )
    p.add_argument("--timeout", type=int, default=1800, help="seconds per script")
    p.add_argument("--gpu-json", type=Path, default=None, help="GPU rows from this gpu_check JSON (skips the run)")
    args = p.parse_args()
    unknown = sorted(set(args.only or []) - {r[0] for r in runs()} - {GPU_SCRIPT})
    if unknown:
        p.error(f"--only: unknown {', '.join(unknown)} (pick from {', '.join(r[0] for r in runs())}, {GPU_SCRIPT})")
    home = (args.home or Path(os.environ.get("DSKD_BENCH_HOME", C.DEFAULT_HOME))).expanduser().resolve()
    (home / "logs").mkdir(parents=True, exist_ok=True)
    here = Path(__file__).resolve().parent
    rows, failed = [], False
    t_all = time.perf_counter()
    for name, script, extra in [r for r in runs() if args.only is None or r[0] in args.only]:
        cmd = [sys.executable, str(here / f"{script}.py"), "--home", str(home), *extra] + (["--tiny"] * args.tiny)
        log_path = home / "logs" / f"{name}.log"
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        code, stdout, seconds = run_script(cmd, log_path, args.timeout)
        lines = stdout.strip().splitlines()
        res = parse_result(lines[-1]) if lines else None
        details = next((json.loads(ln[len("DETAILS ") :]) for ln in reversed(lines) if ln.startswith("DETAILS ")), {})
        if code != 0 or res is None:
            failed = True
            print(f"    FAILED (exit {code}, log {log_path})", flush=True)
        rows.append({"script": name, "exit": code, "seconds": seconds, "result": res, "details": details})
        if res:
            print(
                f"    {res['measure']} = {res['value']:.4g} (target {res['op']}{res['target']:g}) "
                f"{'pass' if res['passed'] else 'FAIL'} in {seconds:.0f} s",
                flush=True,
            )
    gpu = None
    if args.gpu_json is not None:
        gpu = json.loads(args.gpu_json.read_text())
    elif args.only is None or GPU_SCRIPT in args.only:
        gpu_out = home / f"gpu_check-{'tiny' if args.tiny else 'default'}.json"
        cmd = [sys.executable, str(here / f"{GPU_SCRIPT}.py"), "--out", str(gpu_out)] + (["--tiny"] * args.tiny)
        print(f"[{time.strftime('%H:%M:%S')}] {GPU_SCRIPT} ...", flush=True)
        code, _, _ = run_script(cmd, home / "logs" / f"{GPU_SCRIPT}.log", args.timeout)
        if code != 0 or not gpu_out.is_file():
            failed = True
            print(f"    FAILED (exit {code}, log {home / 'logs' / GPU_SCRIPT}.log)", flush=True)
        else:
            gpu = json.loads(gpu_out.read_text())
    total = time.perf_counter() - t_all
    table = print_tables(rows, gpu)
    print(f"total {total:.0f} s; logs in {home / 'logs'}")
    out = home / f"results-{'tiny' if args.tiny else 'default'}.json"
    out.write_text(
        json.dumps(
            {"date": time.strftime("%Y-%m-%d %H:%M"), "total_s": total, "issue_table": table, "rows": rows, "gpu": gpu},
            indent=2,
        )
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
