"""Preflight: everything knowable from the config and the teacher's ``config.json``, checked before any stage runs.

No model is loaded. The teacher's shape comes from ``teacher.path/config.json``, else from the teacher artifact
already in ``$DSKD_HOME`` (the converted embedded default), else from the embedded GGUF file's header (~2 s). Each
problem is a one-line :class:`~dskd.config.ConfigError` naming the setting and the fix; :func:`preflight` raises
the first one, so a run that would fail late (a bad ``student.n_layers`` after a 48 s teacher pass) fails at once.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dskd.config import ConfigError, PipelineConfig

STORAGE_TIMEOUT_S = 8.0  # an unreachable object store must not eat the preflight budget


@dataclass
class TeacherShape:
    """What the checks need from the teacher: layers, width, vocabulary; ``source`` says where it was read."""

    n_layers: int
    hidden_size: int
    vocab_size: int
    source: str


def _shape_from_config(path: Path) -> TeacherShape:
    config = json.loads(path.read_text())
    config = config.get("text_config", config)  # multimodal wrappers keep the LM under text_config
    return TeacherShape(config["num_hidden_layers"], config["hidden_size"], config["vocab_size"], str(path))


def _shape_from_gguf(package: str, gguf_file: str) -> TeacherShape:
    from gguf import GGUFReader

    from dskd.teacher.model import gguf_source

    path = gguf_source(package, gguf_file)
    fields = GGUFReader(str(path)).fields
    arch = str(bytes(fields["general.architecture"].parts[-1]), "utf-8")

    def scalar(name: str) -> int:
        field = fields[name]
        return int(field.parts[field.data[0]][0])

    vocab = (
        scalar(f"{arch}.vocab_size") if f"{arch}.vocab_size" in fields else len(fields["tokenizer.ggml.tokens"].data)
    )
    return TeacherShape(scalar(f"{arch}.block_count"), scalar(f"{arch}.embedding_length"), vocab, str(path))


def teacher_shape(cfg: PipelineConfig) -> TeacherShape:
    """The teacher's layers / width / vocab without loading it (see the module docstring for the sources)."""
    from dskd.teacher.model import check_model_dir

    if cfg.teacher.path:
        return _shape_from_config(check_model_dir(cfg.teacher.path) / "config.json")
    from dskd.store.artifacts import artifact_dir, stage_key

    converted = artifact_dir(cfg.home_path, "teacher", stage_key("teacher", cfg.teacher.model_dump(), {}))
    if (converted / "model" / "config.json").is_file():
        return _shape_from_config(converted / "model" / "config.json")
    return _shape_from_gguf(cfg.teacher.gguf_package, cfg.teacher.gguf_file)


def check_student(cfg: PipelineConfig, teacher: TeacherShape) -> None:
    """Layers, width and projection of the student against the teacher (or ``student.init_path``)."""
    st = cfg.student
    if st.init_path:
        config = Path(st.init_path).expanduser() / "config.json"
        if not config.is_file():
            raise ConfigError(f"student.init_path '{st.init_path}' is not a local HF model dir (no config.json)")
        base = _shape_from_config(config)
        if base.vocab_size != teacher.vocab_size:
            raise ConfigError(
                f"student.init_path has vocab {base.vocab_size}, the teacher {teacher.vocab_size}: DSKD needs the "
                "teacher's vocabulary; pick a student of the same family"
            )
    else:
        base = teacher
    width = st.hidden_size or base.hidden_size
    if st.hidden_size is None and st.n_layers > base.n_layers:
        who = "student.init_path" if st.init_path else f"the teacher ({teacher.source})"
        raise ConfigError(f"student.n_layers={st.n_layers} exceeds the {base.n_layers} layers of {who}; lower it")
    if st.hidden_size is None and isinstance(st.layers, list) and st.layers[-1] >= base.n_layers:
        raise ConfigError(
            f"student.layers names layer {st.layers[-1]} but the model has layers 0..{base.n_layers - 1}; fix the list"
        )
    if st.hidden_size is None and st.layers == "block_influence":
        if st.init_path:
            raise ConfigError(
                "student.layers=block_influence scores the teacher's layers, not student.init_path's; "
                "set student.layers=first or list the layers"
            )
        if cfg.cache.block_influence_tokens == 0:
            raise ConfigError(
                "student.layers=block_influence needs cache.block_influence_tokens > 0 (the teacher pass measures it)"
            )
    if cfg.train.loss == "dskd" and width != teacher.hidden_size and not st.project_to_teacher:
        raise ConfigError(
            f"student width {width} != teacher width {teacher.hidden_size}: set student.project_to_teacher=true "
            "to learn a projection for the sense loss"
        )
    if cfg.cache.topk > teacher.vocab_size:
        raise ConfigError(f"cache.topk={cfg.cache.topk} exceeds the teacher's vocabulary ({teacher.vocab_size})")


def _cuda_count() -> int:
    import torch  # only when a GPU is asked for: importing torch costs ~1 s

    return torch.cuda.device_count()


def check_resources(cfg: PipelineConfig, environ: dict[str, str] | None = None) -> None:
    """Workers against what a local Ray gets (a remote cluster is only known once connected) and GPUs asked for."""
    environ = dict(os.environ if environ is None else environ)
    tr, cache = cfg.train, cfg.cache
    local = not (tr.ray_address or environ.get("RAY_ADDRESS"))
    if local and not tr.use_gpu:
        ray_cpus = max(2, tr.num_workers)  # what tasks/train_student starts a local Ray with
        need = tr.num_workers * tr.threads_per_worker
        if need > ray_cpus:
            raise ConfigError(
                f"train.num_workers={tr.num_workers} x train.threads_per_worker={tr.threads_per_worker} = {need} "
                f"CPUs, but the local Ray gets {ray_cpus}: the workers cannot be scheduled; lower "
                "train.threads_per_worker or set train.ray_address"
            )
    if local and tr.use_gpu and _cuda_count() < tr.num_workers:
        raise ConfigError(
            f"train.use_gpu=true with train.num_workers={tr.num_workers} needs as many GPUs, this machine has "
            f"{_cuda_count()}; set train.use_gpu=false or lower train.num_workers"
        )
    if local and cache.device == "cuda" and _cuda_count() == 0:
        raise ConfigError("cache.device=cuda but this machine has no CUDA GPU; set cache.device=auto or cpu")
    if tr.num_workers > cfg.corpus.n_train_seqs:
        raise ConfigError(
            f"train.num_workers={tr.num_workers} exceeds corpus.n_train_seqs={cfg.corpus.n_train_seqs}: a worker "
            "would get no sequence; lower train.num_workers"
        )


def check_corpus(cfg: PipelineConfig) -> None:
    """Enough corpus for the requested sequences, by an upper bound: a BPE token covers at least one byte, so
    fewer bytes than tokens asked for can never fill them (a larger corpus may still fall short; annotate says)."""
    from dskd.data.corpus import source_files

    c = cfg.corpus
    try:
        files = source_files(c.source)
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from None
    size = sum(p.stat().st_size for p in files)
    need = (c.n_train_seqs + c.n_heldout_seqs) * c.seq_len
    if size < need:
        raise ConfigError(
            f"corpus '{c.source}' holds {size:,} bytes, fewer than the {need:,} tokens asked for "
            f"((corpus.n_train_seqs + n_heldout_seqs) x seq_len); add text or lower corpus.n_train_seqs"
        )
    lex = cfg.lexicon
    if "kaikki" in lex.sources and not (lex.kaikki_path and Path(lex.kaikki_path).expanduser().is_file()):
        raise ConfigError(f"lexicon.sources has 'kaikki' but lexicon.kaikki_path={lex.kaikki_path!r} is not a file")


def expected_metrics(cfg: PipelineConfig) -> set[str]:
    """Metric names the evaluate stage will produce for this config (what registry.metric may name); the lexical
    probe's names start with ``probe.``."""
    names = {"heldout_nll", "heldout_perplexity", "heldout_accuracy", "heldout_tokens"}
    fields = ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n", "n_shot")
    names |= {f"mc.{Path(t).stem if t.endswith('.yaml') else t}.{m}" for t in cfg.eval.tasks for m in fields}
    return names


def check_eval(cfg: PipelineConfig) -> None:
    """Harness task names (the shipped ones are known without building the harness's task index) and the registry
    gate metric."""
    from dskd.eval.harness import LOCAL_TASKS

    tasks = cfg.eval.tasks
    unknown = [t for t in tasks if t not in LOCAL_TASKS and not t.startswith("mmlu_") and not Path(t).is_file()]
    if unknown:  # maybe another harness task with local data: ask the harness (its task index takes ~5-10 s)
        from dskd.eval.harness import check_tasks, local_task_manager

        try:
            check_tasks(unknown, local_task_manager())
        except ValueError as err:
            raise ConfigError(f"eval.tasks: {err}") from None
    metric = cfg.registry.metric
    if metric not in expected_metrics(cfg) and not (cfg.eval.probe_items and metric.startswith("probe.")):
        raise ConfigError(
            f"registry.metric '{metric}' is not an eval metric of this config; use e.g. heldout_perplexity "
            f"or one of {sorted(expected_metrics(cfg))[:6]}..."
        )


def _reach(uri: str, setting: str) -> None:
    import pyarrow.fs as pafs

    from dskd.config import check_storage_uri

    check_storage_uri(uri)
    try:
        fs, root = pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as err:
        raise ConfigError(f"{setting} {uri!r} cannot be opened ({str(err).splitlines()[0]})") from None

    def probe() -> None:
        if isinstance(fs, pafs.LocalFileSystem):
            fs.create_dir(root, recursive=True)  # where artifacts will go anyway; fails when not writable
            if not os.access(root, os.W_OK):
                raise OSError(f"{root} is not writable")
        else:
            fs.get_file_info(root.rstrip("/") or root)

    pool = ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(probe).result(timeout=STORAGE_TIMEOUT_S)
    except FutureTimeout:
        raise ConfigError(
            f"{setting} {uri!r} did not answer within {STORAGE_TIMEOUT_S:.0f} s; check the endpoint / network"
        ) from None
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"{setting} {uri!r} cannot be reached ({str(err).splitlines()[0]}); check the URI and credentials"
        ) from None
    finally:
        pool.shutdown(wait=False)


def check_storage(cfg: PipelineConfig) -> None:
    """``storage.uri`` and a URI ``train.storage_path`` answer (and a local one is writable)."""
    if cfg.storage.uri:
        _reach(cfg.storage.uri, "storage.uri")
    path = cfg.train.storage_path
    if path and "://" in path:
        _reach(path, "train.storage_path")


def preflight(cfg: PipelineConfig, environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Run every check (cheap ones first); raise the first problem as a one-line ConfigError.

    Returns what was checked against (the teacher shape and its source), for the CLI to show.
    """
    check_resources(cfg, environ)
    check_corpus(cfg)
    check_eval(cfg)
    try:
        teacher = teacher_shape(cfg)
    except (FileNotFoundError, KeyError, json.JSONDecodeError) as err:
        raise ConfigError(f"teacher: {str(err).splitlines()[0]}") from None
    check_student(cfg, teacher)
    check_storage(cfg)
    return {"teacher": teacher}
