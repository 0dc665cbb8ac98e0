"""Every bench script runs in its --tiny setting (random tiny teacher, a few sequences) in a subprocess: exit 0 and a
parseable RESULT line last. No timing asserts: the figures are the bench's business (bench/README.md).

To keep the file within a few minutes on two busy cores, one script first builds the shared tiny home (teacher,
lexicon, annotate, teacher cache, sense index); then the two slow ones that mostly wait on process start-up (the
whole flow twice, Ray Train worker groups) run in the background while the others run one by one. Only the
foreground scripts write to the shared home's MLflow store; the background ones only read its artifacts.
"""

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
PREPARE = "dskd_step_overhead"  # needs every stage up to the sense index: builds the shared home
BACKGROUND = ["rerun_ratio", "ray_scaling"]
FOREGROUND = [
    "hidden_bytes",
    "logit_bytes",
    "kmeans_faiss_vs_sklearn",
    "cache_vs_online",
    "teacher_cache_overhead",
    "cache_rss",
    "time_to_quality",
    "integrity_cost",
]
SCRIPTS = [PREPARE, *FOREGROUND, *BACKGROUND]
# The `bench` extra (mlflow and accelerate pull both in today, but the suite must not depend on that).
NEEDS = {"kmeans_faiss_vs_sklearn": "sklearn", "cache_rss": "psutil"}
TIMEOUT = 900


class Runner:
    """Runs bench scripts with --tiny against one home; output goes to files (no pipe can fill up and block)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.logs = home / "test-logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.background: dict[str, subprocess.Popen] = {}

    def _cmd(self, script: str) -> list[str]:
        return [sys.executable, str(BENCH / f"{script}.py"), "--tiny", "--home", str(self.home)]

    def _files(self, script: str) -> tuple[Path, Path]:
        return self.logs / f"{script}.out", self.logs / f"{script}.err"

    def start(self, script: str) -> None:
        out, err = self._files(script)
        with open(out, "w") as fo, open(err, "w") as fe:
            self.background[script] = subprocess.Popen(self._cmd(script), stdout=fo, stderr=fe, cwd=REPO)

    def result(self, script: str) -> tuple[int, str, str]:
        out, err = self._files(script)
        if script in self.background:
            code = self.background[script].wait(timeout=TIMEOUT)
        elif out.is_file() and script == PREPARE:
            code = int((self.logs / f"{script}.code").read_text())
        else:
            with open(out, "w") as fo, open(err, "w") as fe:
                code = subprocess.run(self._cmd(script), stdout=fo, stderr=fe, timeout=TIMEOUT, cwd=REPO).returncode
            (self.logs / f"{script}.code").write_text(str(code))
        return code, out.read_text(), err.read_text()

    def stop(self) -> None:
        for proc in self.background.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    home = Path(os.environ.get("DSKD_BENCH_TEST_HOME") or tmp_path_factory.mktemp("bench_home"))
    r = Runner(home)
    r.result(PREPARE)  # the shared tiny teacher and stage artifacts, before anything runs beside it
    for script in BACKGROUND:
        r.start(script)
    yield r
    r.stop()


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
def test_script_tiny(script: str, runner: Runner):
    if script in NEEDS:
        pytest.importorskip(NEEDS[script], reason="pip install -e '.[bench]'")
    code, stdout, stderr = runner.result(script)
    assert code == 0, stdout[-3000:] + stderr[-5000:]
    lines = stdout.strip().splitlines()
    assert lines and RESULT.match(lines[-1]), f"last stdout line is not a RESULT: {lines[-1:]!r}"
    assert math.isfinite(float(lines[-1].split("value=")[1].split()[0]))
