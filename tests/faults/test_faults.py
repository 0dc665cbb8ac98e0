"""Fault injection against the real `dskd run` command line (subprocess), real Prefect, Ray Train and MLflow:

1. kill -9 one Ray Train worker mid-run: the worker group restarts from the latest checkpoint, the run goes on;
2. later kill -9 the driver itself (and, like a machine crash, the local Ray and Prefect processes it started);
   the rerun of the same config resumes from the latest checkpoint of the same train key, and its student matches
   an uninterrupted run (same seed) within tolerance, with a loss history holding every step once;
3. flip 4 KB in the middle of a teacher-cache shard and rerun with a new train.lr: one-line error naming the file;
4. bad input (student.n_layers=99, YAML syntax error): one line, exit 2, before any stage runs.

Each test prints its figure. The tiny config keeps the whole module to a few minutes on two cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
STEPS = 48  # 48 train sequences / 2 workers / batch 1 = 24 steps per epoch, 2 epochs
WORKER_KILL_AT, DRIVER_KILL_AT = 6, 24


def overrides(teacher_dir: Path, home: Path, *extra: str) -> list[str]:
    return [
        f"home={home}",
        f"teacher.path={teacher_dir}",
        "corpus.n_train_seqs=48",
        "corpus.n_heldout_seqs=4",
        "corpus.seq_len=32",
        "corpus.shard_seqs=16",
        "train.batch_size=1",
        "train.num_workers=2",
        "train.epochs=2",
        "train.checkpoint_every=2",
        "train.max_failures=2",
        "eval.tasks={}",
        "eval.probe_items=0",
        "student.n_layers=2",
        "student.n_trainable_layers=1",
        *extra,
    ]


def child_env() -> dict[str, str]:
    """The test session's environment without its homes: the CLI sets them under its own home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DSKD_", "PREFECT_", "MLFLOW_", "RAY_"))}
    return {**env, "PYTHONPATH": str(REPO), "COLUMNS": "300"}


def cli(args: list[str], log: Path, timeout: float = 420) -> subprocess.CompletedProcess:
    with open(log, "w") as fh:
        proc = subprocess.run(
            [sys.executable, "-m", "flows.cli", *args],
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=child_env(),
            timeout=timeout,
        )
    return subprocess.CompletedProcess(proc.args, proc.returncode, log.read_text(), "")


def latest_checkpoint_step(home: Path) -> int:
    steps = []
    for state in home.glob("ray_results/dskd-train-*/checkpoint_*/state.json"):
        try:
            meta = json.loads(state.read_text())
        except (OSError, ValueError):
            continue  # being written
        if not meta.get("final"):
            steps.append(meta["step"])
    return max(steps, default=0)


def descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def kill_all(procs) -> None:
    """SIGKILL the given processes, by pid (only ones this test started)."""
    for p in procs:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_for(predicate, timeout: float, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"driver exited (rc {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def killed_then_resumed(tiny_teacher_dir, tmp_path_factory):
    """Run 1: kill a train worker at step >= 6, then the driver at step >= 20. Run 2: the same command again."""
    home = tmp_path_factory.mktemp("faults_home")
    args = ["run", *overrides(tiny_teacher_dir, home)]
    log = home / "run1.log"
    with open(log, "w") as fh:
        driver = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", *args], stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=child_env()
        )
    started = []
    try:
        wait_for(lambda: latest_checkpoint_step(home) >= WORKER_KILL_AT, 300, driver, "the first checkpoints")
        workers = [p for p in descendants(driver.pid) if "RayTrainWorker" in " ".join(p.cmdline())]
        assert len(workers) == 2, [" ".join(p.cmdline())[:80] for p in descendants(driver.pid)]
        worker_step = latest_checkpoint_step(home)
        os.kill(workers[0].pid, signal.SIGKILL)
        wait_for(lambda: latest_checkpoint_step(home) >= DRIVER_KILL_AT, 300, driver, "training past the restart")
        driver_step = latest_checkpoint_step(home)
        started = descendants(driver.pid)  # its local Ray and Prefect server: they die with the "machine"
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            os.kill(driver.pid, signal.SIGKILL)
        kill_all(started or descendants(driver.pid))
    resume_from = latest_checkpoint_step(home)
    t0 = time.perf_counter()
    second = cli(args, home / "run2.log")
    return {
        "home": home,
        "args": args,
        "worker_step": worker_step,
        "driver_step": driver_step,
        "resume_from": resume_from,
        "second": second,
        "second_seconds": time.perf_counter() - t0,
    }


def _artifact(home: Path, stage: str) -> list[Path]:
    return sorted((home / "artifacts" / stage).glob("[0-9a-f]*"), key=lambda p: p.stat().st_mtime)


def test_worker_kill_and_driver_kill_resume(killed_then_resumed, tiny_teacher_dir):
    run = killed_then_resumed
    assert run["second"].returncode == 0, run["second"].stdout[-3000:]
    home = run["home"]
    (train,) = _artifact(home, "train")
    history = json.loads((train / "history.json").read_text())
    assert [h["step"] for h in history] == list(range(1, STEPS + 1))  # every step once
    # The rerun resumed: the killed run's checkpoint dir (named by the train key) was reused, then cleaned.
    assert run["resume_from"] >= DRIVER_KILL_AT
    assert not list(home.glob("ray_results/dskd-train-*/checkpoint_*")) or list(home.glob("ray_results/*-finished"))
    # Uninterrupted reference with the same seed: keep_checkpoints changes the train key only (fresh run).
    ref = cli(["run", *overrides(tiny_teacher_dir, home, "train.keep_checkpoints=0")], home / "ref.log")
    assert ref.returncode == 0, ref.stdout[-3000:]
    ref_train = [p for p in _artifact(home, "train") if p != train][0]
    ref_history = json.loads((ref_train / "history.json").read_text())
    final, ref_final = history[-1]["loss_total"], ref_history[-1]["loss_total"]
    rel = abs(final - ref_final) / ref_final
    import torch
    from safetensors.torch import load_file

    a = load_file(str(train / "student" / "model.safetensors"))
    b = load_file(str(ref_train / "student" / "model.safetensors"))
    max_diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    print(
        f"\nworker killed at checkpoint step {run['worker_step']}, driver killed at step {run['driver_step']}; "
        f"rerun resumed at step {run['resume_from'] + 1} of {len(history)} ({run['second_seconds']:.0f} s); "
        f"final loss {final:.4f} vs uninterrupted {ref_final:.4f} ({rel:.2%}); max |weight diff| {max_diff:.2e}"
    )
    assert rel < 0.004 and max_diff < 2e-2
    assert torch.equal(a["model.embed_tokens.weight"], b["model.embed_tokens.weight"])  # frozen: identical
    # The reference run kept no checkpoints (keep_checkpoints=0).
    assert len(list(home.glob("ray_results/dskd-train-*"))) <= 1


def test_corrupt_teacher_cache_shard_is_refused(killed_then_resumed):
    run = killed_then_resumed
    home = run["home"]
    (cache,) = _artifact(home, "teacher_cache")
    shard = sorted((cache / "shards").glob("*.parquet"))[1]
    data = bytearray(shard.read_bytes())
    mid = len(data) // 2 - 2048
    data[mid : mid + 4096] = bytes(b ^ 0xFF for b in data[mid : mid + 4096])
    shard.write_bytes(bytes(data))
    t0 = time.perf_counter()
    out = cli([*run["args"], "train.lr=1e-3", "train.max_failures=0"], home / "corrupt.log")  # no Ray retry
    lines = [line for line in out.stdout.splitlines() if line.startswith("error:")]
    print(f"\ncorrupt shard refused after {time.perf_counter() - t0:.0f} s: {lines[:1]}")
    assert out.returncode == 2, out.stdout[-3000:]
    assert len(lines) == 1 and str(shard) in lines[0] and f"remove {cache}" in lines[0]
    assert len(_artifact(home, "register")) == 2  # no new version registered (resumed run + reference)


def test_bad_input_fails_before_any_stage(tiny_teacher_dir, tmp_path):
    t0 = time.perf_counter()
    out = cli(["run", *overrides(tiny_teacher_dir, tmp_path, "student.n_layers=99")], tmp_path / "layers.log")
    seconds = time.perf_counter() - t0
    assert out.returncode == 2 and out.stdout.strip().count("\n") == 0, out.stdout
    assert "student.n_layers=99 exceeds the 4 layers" in out.stdout
    assert not (tmp_path / "artifacts").exists()  # no stage ran
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: [1e-4\n")
    out = cli(["run", "--config", str(bad)], tmp_path / "yaml.log")
    assert out.returncode == 2 and out.stdout.startswith(f"error: {bad}:3:1: YAML syntax error")
    print(f"\nstudent.n_layers=99 refused in {seconds:.1f} s (whole CLI process, before any stage)")
