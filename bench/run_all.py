"""Run every bench script, collect the RESULT line each prints last, print a table (measure, figure, target, pass).

    .venv/bin/python bench/run_all.py            # the default settings (`make bench`), ~30 min on 2 idle cores
    .venv/bin/python bench/run_all.py --tiny     # seconds-scale smoke run
    .venv/bin/python bench/run_all.py --only logit_bytes hidden_bytes

Each script's full output goes to <home>/logs/<script>.log; the table and every script's DETAILS line are written to
<home>/results-<profile>.json. Exit status 1 if a script failed or printed no RESULT line (an unmet target is a
result, not a failure).
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
]
RESULT_RE = re.compile(
    r"^RESULT measure=(?P<measure>\S+) value=(?P<value>\S+) target=(?P<op><=|>=)(?P<target>\S+) "
    r"pass=(?P<passed>true|false)$"
)


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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="run every script with --tiny")
    p.add_argument("--home", type=Path, default=None, help="bench home passed to every script")
    p.add_argument("--only", nargs="*", default=None, help="script names to run (default: all)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per script")
    args = p.parse_args()
    home = (args.home or Path(os.environ.get("DSKD_BENCH_HOME", C.DEFAULT_HOME))).expanduser().resolve()
    (home / "logs").mkdir(parents=True, exist_ok=True)
    here = Path(__file__).resolve().parent
    rows, failed = [], False
    t_all = time.perf_counter()
    for name in args.only or SCRIPTS:
        cmd = [sys.executable, str(here / f"{name}.py"), "--home", str(home)] + (["--tiny"] if args.tiny else [])
        log_path = home / "logs" / f"{name}.log"
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=C.REPO)
            stdout, stderr, code = proc.stdout, proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as err:
            stdout, stderr, code = err.stdout or "", (err.stderr or "") + "\nTIMEOUT", -1
            stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
            stderr = stderr.decode() if isinstance(stderr, bytes) else stderr
        seconds = time.perf_counter() - t0
        log_path.write_text(f"$ {' '.join(cmd)}\n--- stdout\n{stdout}\n--- stderr\n{stderr}")
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
    total = time.perf_counter() - t_all
    header = f"{'measure':<28} {'figure':>10} {'target':>8}  {'pass/fail':<9} {'seconds':>7}"
    print("\n" + header + "\n" + "-" * len(header))
    for row in rows:
        res = row["result"]
        if res is None:
            print(f"{row['script']:<28} {'-':>10} {'-':>8}  {'ERROR':<9} {row['seconds']:>7.0f}")
        else:
            target = f"{res['op']}{res['target']:g}"
            verdict = "pass" if res["passed"] else "fail"
            print(f"{res['measure']:<28} {res['value']:>10.4g} {target:>8}  {verdict:<9} {row['seconds']:>7.0f}")
    print(f"total {total:.0f} s; logs in {home / 'logs'}")
    out = home / f"results-{'tiny' if args.tiny else 'default'}.json"
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "total_s": total, "rows": rows}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
