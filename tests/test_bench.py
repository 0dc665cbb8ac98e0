"""Every bench script runs in its --tiny setting (random tiny teacher, a few sequences) in a subprocess: exit 0 and a
parseable RESULT line last. No timing asserts: the figures are the bench's business (bench/README.md).

To keep the file within a few minutes on two busy cores, one script first builds the shared tiny home (teacher,
lexicon, annotate, teacher cache, sense index); then the two slow ones that mostly wait on process start-up (the
whole flow twice, Ray Train worker groups) run in the background while the others run one by one. Only the
foreground scripts write to the shared home's MLflow store; the background ones only read its artifacts.
"""

from __future__ import annotations

import contextlib
import io
import json
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
    "reservoir_memory",
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


def bench_module(name: str):
    """Import a bench/ module (they import each other by bare name, as when run as scripts)."""
    sys.path.insert(0, str(BENCH))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(BENCH))


def test_every_script_is_listed():
    run_all = bench_module("run_all")
    # _helpers are imported by the scripts; gpu_check writes a JSON (run by run_all after the RESULT scripts).
    on_disk = {p.stem for p in BENCH.glob("*.py") if not p.stem.startswith("_")} - {"run_all", run_all.GPU_SCRIPT}
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


def test_the_1b_teacher_variant_runs_and_names_its_measure(runner: Runner):
    """run_all's variant: the teacher-cache bench on a random Llama-3.2-1B-shaped teacher (--tiny: a 2-layer one)."""
    run_all = bench_module("run_all")
    script, extra = run_all.VARIANTS["teacher_cache_overhead_1b"]
    assert ("teacher_cache_overhead_1b", script, extra) in run_all.runs()
    cmd = [sys.executable, str(BENCH / f"{script}.py"), "--tiny", "--home", str(runner.home), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert RESULT.match(last) and last.startswith("RESULT measure=teacher_cache_overhead_1b ")
    details = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("DETAILS "))[len("DETAILS ") :])
    assert details["teacher_shape"] == "1b" and details["teacher"].endswith("random-1b-tiny")


def test_run_all_prints_every_issue_row():
    run_all = bench_module("run_all")
    rows = [
        {
            "script": "ray_scaling",
            "seconds": 1.0,
            "result": run_all.parse_result("RESULT measure=ray_scaling_2w_over_1w value=2.14 target=>=1.8 pass=false"),
            "details": {"verdict": "noise", "ratio_bootstrap_95": [1.5, 2.9], "ratio_rounds_min_max": [1.9, 2.3]},
        },
        {"script": "hidden_bytes", "seconds": 1.0, "result": None, "details": {}},
    ]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        table = run_all.print_tables(rows, {"gpu": False, "reason": "no CUDA"})
    text = out.getvalue()
    assert [r["issue 14 row"] for r in table] == [r[0] for r in run_all.ISSUE_ROWS] + [r[0] for r in run_all.GPU_ROWS]
    result = {r["issue 14 row"]: r["result"] for r in table}
    assert result["Ray 2 workers / 1"] == "fail" and "noise" in text
    assert result["hidden-state bytes kept / every position fp16"] == "not measured"  # its script broke
    assert result["logit-cache bytes/token"] == "not measured"  # not run
    assert result["reservoir memory vs configured budget"] == "not measured"  # no script yet
    assert [r["result"] for r in table[-len(run_all.GPU_ROWS) :]] == ["needs GPU"] * len(run_all.GPU_ROWS)
    assert [r["target"] for r in table[:5]] == ["<= 10 %", "<= 40 B", "<= 1.05", "<= 1.05", ">= 1.8, stable"]
    assert result["  same, 1B-class teacher (random Llama-3.2-1B shape)"] == "not measured"


def test_ray_scaling_statistics():
    ray_scaling = bench_module("ray_scaling")
    # Stamps mark the end of steps 1..4; step 1 (warm-up) has no start stamp, steps 2-4 last 1, 2 and 1 s.
    assert ray_scaling.step_throughputs([0.0, 1.0, 3.0, 4.0], 1, 10) == [10.0, 5.0, 10.0]
    assert ray_scaling.verdict(1.9, (1.85, 1.95)) == "measured"
    assert ray_scaling.verdict(2.1, (2.05, 2.15)) == "noise"  # 2 workers cannot do more than 2x the work of 1
    assert ray_scaling.verdict(1.9, (1.5, 2.3)) == "noise"  # +-21 %: too wide to read
    lo, hi = ray_scaling.bootstrap_ratio([10.0] * 30, [19.0] * 30)
    assert lo == hi == pytest.approx(1.9)


def test_set_overrides_parse_json_values_and_refuse_other_sections():
    common = bench_module("_common")
    sets = ["train.grad_accum=2", "train.grad_allreduce=bf16", "train.max_grad_norm=null"]
    assert common.parse_sets(sets, ("train.",)) == {
        "train.grad_accum": 2,
        "train.grad_allreduce": "bf16",
        "train.max_grad_norm": None,
    }
    with pytest.raises(SystemExit, match=r"--set 'cache.topk=8': expected train.KEY=VALUE \(e.g."):
        common.parse_sets(["cache.topk=8"], ("train.",))
    with pytest.raises(SystemExit, match="expected train.KEY=VALUE or cache.KEY=VALUE"):
        common.parse_sets(["train.lr"], ("train.", "cache."))


def run_gpu_check(tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, str(BENCH / "gpu_check.py"), "--out", str(out), "--home", str(tmp_path), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(out.read_text())


def test_gpu_check_without_gpu(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine: the real check is bench/gpu_check.sh")
    doc = run_gpu_check(tmp_path)
    assert doc["gpu"] is False and doc["parts"] == {} and "CPU figures" in doc["reason"]


def test_gpu_check_cpu_smoke(tmp_path):
    """Every part's code path on CPU with tiny models (no timing asserts): the JSON's fields and the FLOP count."""
    doc = run_gpu_check(tmp_path, "--device", "cpu", "--tiny")
    assert doc["gpu"] is False and doc["device"] == "cpu"
    parts = doc["parts"]
    assert [p for p in parts if parts[p]["status"] == "measured"] == ["teacher_pass", "train_default", "train_1b"]
    tp = parts["teacher_pass"]
    assert tp["results"][0]["tokens"] == 16 * 32 and tp["results"][0]["batch"] == 4
    assert set(tp["summary"]) == {"batch", "stage_over_bare", "stage_tokens_per_s", "bare_tokens_per_s"}
    for name in ("train_default", "train_1b"):
        summary = parts[name]["summary"]
        assert summary["tokens_per_s"] > 0 and summary["mfu"] is None and summary["peak_mem_gib"] is None  # CPU
        assert "6N" in parts[name]["flops_formula"]
    # The tiny 1B stand-in: d=128, 2 layers, 4 heads (head dim 32) of which 2 KV, MLP 256, V=49152, all trainable.
    # Per layer q,o 128x128 + k,v 128x64 + MLP 3x128x256 = 147,456; lm_head 49152x128 (tied: trainable).
    n = 2 * 147_456 + 49_152 * 128
    attention = 4 * 32 * 128 * 2 + 8 * 32 * 128 * 2  # L=32, d_attn=128, 2 layers forward + backward
    assert parts["train_1b"]["results"][0]["flops_per_token"] == 6 * n + attention
    assert parts["train_1b"]["parameters"] == n + 2 * (2 * 128) + 128  # + RMSNorm weights (2 per layer, final)
    km = parts["kmeans"]
    assert km["status"] == "skipped" and km["cpu_ms_per_token"] > 0 and km["tokens"] == 30 and km["dim"] == 64
