"""Fault injection against the real `dskd run` command line (subprocess), real Prefect, Ray Train and MLflow:

0. kill -9 the driver during the teacher pass, once at least one shard is staged: the rerun computes only the
   missing shards, and the teacher cache is byte for byte the one an uninterrupted pass writes;
1. kill -9 one Ray Train worker mid-run: the worker group restarts from the latest checkpoint, the run goes on;
2. later kill -9 the driver itself (and, like a machine crash, the local Ray and Prefect processes it started);
   the rerun of the same config resumes from the latest checkpoint of the same train key, and its student matches
   an uninterrupted run (same seed) within tolerance, with a loss history holding every step once;
3. flip 4 KB in the middle of a teacher-cache shard and rerun with a new train.lr: one-line error naming the file;
4. bad input (student.n_layers=99, YAML syntax error): one line, exit 2, before any stage runs.

5. every run has a secret AWS_SECRET_ACCESS_KEY and a token-like HF_TOKEN in its environment: neither reaches
   any file under DSKD_HOME (MLflow's SQLite DB and artifacts, Prefect's DB and results, logs).

All of it is one chain of runs in one home (run 0 killed in the teacher pass, run 1 killed in training, run 2
resumed), so the upstream artifacts are computed once. Each test prints its figure.
"""

from __future__ import annotations

import json
import os
import shutil
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
SHARDS = 12  # 48 sequences / corpus.shard_seqs=4: the teacher pass is killed between two of them
# Random per session, so a hit can only come from this run's environment.
SECRET = f"dskd-secret-{os.urandom(8).hex()}"
TOKEN = f"hf_{os.urandom(12).hex()}"


def overrides(teacher_dir: Path, home: Path, *extra: str) -> list[str]:
    return [
        f"home={home}",
        f"teacher.path={teacher_dir}",
        "corpus.n_train_seqs=48",
        "corpus.n_heldout_seqs=4",
        "corpus.seq_len=32",
        "corpus.shard_seqs=4",
        "train.batch_size=1",
        "train.num_workers=2",
        "train.epochs=2",
        "train.checkpoint_every=6",  # a checkpoint costs seconds on 2 busy cores: few, at the kill points
        "train.max_failures=2",
        "eval.tasks=[]",
        "eval.probe_items=0",
        "student.n_layers=2",
        "student.n_trainable_layers=1",
        *extra,
    ]


def child_env() -> dict[str, str]:
    """The test session's environment without its homes: the CLI sets them under its own home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DSKD_", "PREFECT_", "MLFLOW_", "RAY_"))}
    env["DSKD_CPU_BF16"] = os.environ["DSKD_CPU_BF16"]  # the same dtype as the in-process reference (conftest)
    secrets = {"AWS_SECRET_ACCESS_KEY": SECRET, "HF_TOKEN": TOKEN}  # must never reach MLflow or Prefect
    return {**env, **secrets, "PYTHONPATH": str(REPO), "COLUMNS": "300"}


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


def staged_markers(home: Path) -> list[Path]:
    return list(home.glob("staging/teacher_cache/*/done/*.json"))


def kill_driver_in_teacher_pass(args: list[str], home: Path) -> int:
    """Run 0: SIGKILL the driver (the teacher pass runs in it) and what it started once >= 1 shard is staged.
    Returns how many shards were staged."""
    with open(home / "run0.log", "w") as fh:
        driver = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", *args], stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=child_env()
        )
    started = []
    try:
        deadline = time.monotonic() + 300
        while not staged_markers(home):
            if driver.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no shard staged (rc {driver.poll()}): {(home / 'run0.log').read_text()[-2000:]}")
            time.sleep(0.005)
        started = descendants(driver.pid)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            os.kill(driver.pid, signal.SIGKILL)
        kill_all(started or descendants(driver.pid))
    assert not list(home.glob("artifacts/teacher_cache/[0-9a-f]*")), "the pass finished before the kill"
    return len(staged_markers(home))


@pytest.fixture(scope="module")
def killed_then_resumed(tiny_teacher_dir, tmp_path_factory):
    """Run 0: kill the driver in the teacher pass. Run 1: kill a train worker at step >= 6, then the driver at
    step >= 24. Run 2: the same command again."""
    home = tmp_path_factory.mktemp("faults_home")
    args = ["run", *overrides(tiny_teacher_dir, home)]
    staged_at_kill = kill_driver_in_teacher_pass(args, home)
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
        "staged_at_kill": staged_at_kill,
        "worker_step": worker_step,
        "driver_step": driver_step,
        "resume_from": resume_from,
        "second": second,
        "second_seconds": time.perf_counter() - t0,
    }


def _artifact(home: Path, stage: str) -> list[Path]:
    return sorted((home / "artifacts" / stage).glob("[0-9a-f]*"), key=lambda p: p.stat().st_mtime)


def uninterrupted_teacher_cache(cache: Path, home: Path, ref_home: Path) -> Path:
    """The same teacher_cache stage (same section and upstream keys, so the same key) run uninterrupted in a fresh
    home holding copies of its upstream artifacts."""
    from dskd.store.artifacts import read_manifest
    from tasks.cache_teacher_outputs import cache_teacher_outputs

    manifest = read_manifest(cache)
    for stage, key in manifest["upstream"].items():
        shutil.copytree(home / "artifacts" / stage / key, ref_home / "artifacts" / stage / key, symlinks=True)
    tracking = {"experiment": "faults-reference", "tracking_uri": None}
    result = cache_teacher_outputs.fn(manifest["config"], manifest["upstream"], str(ref_home), tracking, None, {})
    assert result["computed"] and result["key"] == manifest["key"]
    return Path(result["path"])


def test_teacher_pass_resumes_at_shard_granularity(killed_then_resumed, tmp_path):
    run = killed_then_resumed
    home, staged = run["home"], run["staged_at_kill"]
    assert run["second"].returncode == 0, run["second"].stdout[-3000:]
    (cache,) = _artifact(home, "teacher_cache")
    manifest = json.loads((cache / "manifest.json").read_text())
    assert 1 <= staged < SHARDS
    assert manifest["execution"]["shards"] == SHARDS
    assert manifest["resume"] == {"shards_computed": SHARDS - staged, "shards_resumed": staged}  # only the missing
    assert not (home / "staging" / "teacher_cache").exists() or not any((home / "staging" / "teacher_cache").iterdir())
    ref = uninterrupted_teacher_cache(cache, home, tmp_path)
    ref_files = {f["path"]: f["sha256"] for f in json.loads((ref / "manifest.json").read_text())["files"]}
    files = {f["path"]: f["sha256"] for f in manifest["files"]}
    assert len([p for p in files if p.startswith("shards/")]) == SHARDS
    differ = sorted(p for p in files.keys() | ref_files.keys() if files.get(p) != ref_files.get(p))
    print(
        f"\nteacher pass killed with {staged}/{SHARDS} shards staged; the rerun computed {SHARDS - staged}; "
        f"{len(files) - len(differ)}/{len(files)} artifact files sha256-equal to an uninterrupted pass"
    )
    assert not differ, differ


def test_no_secret_reaches_tracking_or_prefect(killed_then_resumed):
    """Every run of this module had AWS_SECRET_ACCESS_KEY and HF_TOKEN set: no byte of either is in any file of
    its home (MLflow DB + artifacts, Prefect DB + results, checkpoints, the runs' console output)."""
    home = killed_then_resumed["home"]
    stores = [home / "mlflow.db", *home.glob("prefect/*.db")]
    assert all(p.is_file() and p.stat().st_size > 0 for p in stores) and len(stores) >= 2, stores
    (train,) = _artifact(home, "train")[:1]
    # The probe sees what is logged: the train key (an MLflow tag) and the task names Prefect recorded.
    assert train.name.encode() in (home / "mlflow.db").read_bytes()
    prefect_bytes = b"".join(p.read_bytes() for p in home.glob("prefect/*.db*"))
    assert b"cache_teacher_outputs" in prefect_bytes and train.parent.parent.name.encode() == b"artifacts"
    hits, scanned, nbytes = [], 0, 0
    for path in home.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        scanned, nbytes = scanned + 1, nbytes + len(data)
        if SECRET.encode() in data or TOKEN.encode() in data:
            hits.append(str(path.relative_to(home)))
    print(f"\nsecrets set in every run's env; scanned {scanned} files ({nbytes / 1e6:.1f} MB) under the home: {hits}")
    assert not hits


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
    # Uninterrupted reference with the same seed: checkpoint_every and keep_checkpoints change the train key only
    # (a fresh run, one checkpoint at the end, removed when done).
    ref_args = overrides(tiny_teacher_dir, home, f"train.checkpoint_every={STEPS}", "train.keep_checkpoints=0")
    ref = cli(["run", *ref_args], home / "ref.log")
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
