"""Every bench script runs in its --tiny setting (random tiny teacher, a few sequences) in a subprocess: exit 0 and a
parseable RESULT line last. No timing asserts: the figures are the bench's business (bench/README.md)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
# The RESULT contract run_all.py parses (checked here independently of its code).
RESULT = re.compile(r"^RESULT measure=[a-z0-9_]+ value=\S+ target=(<=|>=)[0-9.e+-]+ pass=(true|false)$")
# Cheapest first; later scripts reuse the shared home's tiny teacher and stage artifacts.
SCRIPTS = [
    "hidden_bytes",
    "logit_bytes",
    "kmeans_faiss_vs_sklearn",
    "dskd_step_overhead",
    "cache_vs_online",
    "teacher_cache_overhead",
    "cache_rss",
    "ray_scaling",
    "rerun_ratio",
]


@pytest.fixture(scope="module")
def bench_home(tmp_path_factory) -> Path:
    return Path(os.environ.get("DSKD_BENCH_TEST_HOME") or tmp_path_factory.mktemp("bench_home"))


def test_every_script_is_listed():
    sys.path.insert(0, str(BENCH))
    try:
        import run_all
    finally:
        sys.path.remove(str(BENCH))
    on_disk = {p.stem for p in BENCH.glob("*.py")} - {"_common", "run_all"}
    assert set(run_all.SCRIPTS) == on_disk == set(SCRIPTS)
    ok = run_all.parse_result("RESULT measure=x_y value=1.25 target=<=1.1 pass=false")
    assert ok == {"measure": "x_y", "value": 1.25, "op": "<=", "target": 1.1, "passed": False}
    assert run_all.parse_result("RESULT measure=x value=nan") is None


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_tiny(script: str, bench_home: Path):
    proc = subprocess.run(
        [sys.executable, str(BENCH / f"{script}.py"), "--tiny", "--home", str(bench_home)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    lines = proc.stdout.strip().splitlines()
    assert lines and RESULT.match(lines[-1]), f"last stdout line is not a RESULT: {lines[-1:]!r}"
    assert math.isfinite(float(lines[-1].split("value=")[1].split()[0]))
