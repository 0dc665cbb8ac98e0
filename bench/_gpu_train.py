"""bench/gpu_check.py's training-step part: TrainStep tokens/s, MFU and peak memory for two students."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import _common as C
from _gpu_parts import Context, teacher

# Llama-3.2-1B's shape with the teacher's vocabulary: 1.07 B parameters at V = 49152 (tied embeddings).
LLAMA_1B = dict(
    hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
    max_position_embeddings=4096, rope_theta=500000.0, tie_word_embeddings=True,
)  # fmt: skip
TINY_1B = dict(
    hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=1024, tie_word_embeddings=True,
)  # fmt: skip
# Dense bf16 peak (TFLOP/s, no sparsity) by a substring of torch.cuda.get_device_name.
PEAK_TFLOPS = {"H200": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0}
FLOPS_FORMULA = (
    "per token: 2*N_all (forward) + 2*N_through (input grads: decoder layers from the lowest trainable one up, and "
    "lm_head) + 2*N_trainable (weight grads) + attention 4*L*d_attn per layer forward and 8*L*d_attn per layer the "
    "gradient passes; N = elements of the 2-D weights of the decoder layers and lm_head (embedding lookup not "
    "counted), L = sequence length; all trainable and lm_head trainable this is the usual 6N + 12*n_layers*L*d"
)


def flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs per token of one step (FLOPS_FORMULA)."""
    from dskd.teacher.model import decoder_layers

    layers = list(decoder_layers(model))
    heads = model.config.num_attention_heads
    d_attn = heads * (getattr(model.config, "head_dim", None) or model.config.hidden_size // heads)
    mats = [sum(p.numel() for p in layer.parameters() if p.dim() == 2) for layer in layers]
    trainable = [any(p.requires_grad for p in layer.parameters()) for layer in layers]
    lowest = trainable.index(True) if any(trainable) else len(layers)
    head = model.get_output_embeddings().weight
    n_all = sum(mats) + head.numel()
    n_through = sum(mats[lowest:]) + (head.numel() if lowest < len(layers) or head.requires_grad else 0)
    n_train = sum(p.numel() for layer in layers for p in layer.parameters() if p.dim() == 2 and p.requires_grad)
    n_train += head.numel() if head.requires_grad else 0
    attention = 4 * seq_len * d_attn * len(layers) + 8 * seq_len * d_attn * (len(layers) - lowest)
    return float(2 * n_all + 2 * n_through + 2 * n_train + attention)


class _GpuContext(C.LocalContext):
    """bench/_common.py's single-process worker context, on ``device``."""

    def __init__(self, device: str, scratch: Path) -> None:
        super().__init__(scratch)
        self.device = device


def _batch(B: int, L: int, vocab: int, k: int, kappa: int, n_senses: int, per_seq: int, device: str):
    """A dskd.train.data.Batch of the cache's shapes: random ids, descending top-k logits, lse above them."""
    import torch

    from dskd.train.data import Batch

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(B, L, k, generator=g).sort(dim=-1, descending=True).values * 3
    pos = torch.stack([torch.randperm(L - 1, generator=g)[:per_seq] for _ in range(B)])
    m = B * per_seq
    rows = torch.randint(0, n_senses, (m, kappa), generator=g)
    return Batch(
        input_ids=torch.randint(0, vocab, (B, L), generator=g),
        topk_ids=torch.randint(0, vocab, (B, L, k), generator=g),
        topk_logits=logits,
        lse=logits[..., 0] + 1.0,
        sense_batch=torch.arange(B).repeat_interleave(per_seq),
        sense_pos=pos.reshape(-1),
        pos_rows=rows,
        neg_rows=torch.where(torch.rand(m, kappa, generator=g) < 0.3, -1, rows.flip(0)),
    ).to(device)


def train(ctx: Context, which: str) -> dict[str, Any]:
    """TrainStep (DSKD loss, the default config's train section, autocast bf16 on CUDA) on synthetic batches."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, get_cosine_schedule_with_warmup

    from dskd.config import load_config
    from dskd.train.loop import TrainJob, TrainStep, autocast_dtype
    from dskd.train.student import build_student

    cfg = load_config(C.REPO / "configs" / "default.yaml", [], environ={})
    tdir = teacher(ctx)
    vocab = ctx.teacher_info["vocab_size"]
    st = cfg.student
    if which == "default":
        # First 15 layers: the default's block-influence choice keeps 15 other layers of the same shape (same cost).
        n_layers = min(st.n_layers, ctx.teacher_info["num_hidden_layers"])  # --tiny: the tiny teacher has 4
        model = build_student(tdir, n_layers, st.n_trainable_layers).to(ctx.device)
        what = f"embedded default's student: {n_layers} of the teacher's layers, trainable: {st.n_trainable_layers}"
    else:
        shape = {**(TINY_1B if ctx.tiny else LLAMA_1B), "vocab_size": vocab}
        torch.manual_seed(0)
        with torch.device(ctx.device):  # initialise on the device: a 1 B CPU init alone takes tens of seconds
            model = LlamaForCausalLM(LlamaConfig(**shape)).float().train()
        what = f"random Llama {json.dumps(shape)}, everything trainable"
    n_params = sum(p.numel() for p in model.parameters())
    d_model = model.config.hidden_size
    n_senses = 200 if ctx.tiny else 20000
    senses = torch.randn(n_senses, d_model, device=ctx.device)  # width = the student's: no projection needed
    train_cfg = {**cfg.train.model_dump(), "checkpoint_every": 10**9}
    job = TrainJob(
        teacher_dir=str(tdir), annotate_dir="", cache_dir="", index_dir="", kd_temperature=cfg.cache.kd_temperature,
        student=st.model_dump(), train=train_cfg, kappa=cfg.senses.kappa,
    )  # fmt: skip
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=train_cfg["lr"], weight_decay=train_cfg["weight_decay"])
    scheduler = get_cosine_schedule_with_warmup(optimizer, 0, 10**9)
    step = TrainStep(
        model, optimizer, scheduler, None, senses, train_cfg, job, _GpuContext(ctx.device, ctx.tmp), 10**9, []
    )
    peak = ctx.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in ctx_device_name(ctx)), None)
    settings = [(2, 32)] if ctx.tiny else [(cfg.train.batch_size, cfg.corpus.seq_len), (16, 1024)]
    warmup, timed = (1, 2) if ctx.tiny else (3, 15)
    results, n = [], 0
    for B, L in settings:
        if results and ctx.left() < 20:
            results.append({"batch": B, "seq_len": L, "status": "skipped", "note": "time budget"})
            continue
        batch = _batch(B, L, vocab, cfg.cache.topk, cfg.senses.kappa, n_senses, max(1, L // 3), ctx.device)
        if ctx.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds = []
        for i in range(warmup + timed):
            t0 = time.perf_counter()
            n = step([batch], n, 0)  # float(loss) inside: the step has finished on the device when it returns
            ctx.sync()
            if i >= warmup:
                seconds.append(time.perf_counter() - t0)
        tps = B * L / statistics.median(seconds)
        fpt = flops_per_token(model, L)
        results.append(
            {
                "batch": B,
                "seq_len": L,
                "step_s": seconds,
                "tokens_per_s": tps,
                "flops_per_token": fpt,
                "model_tflops": tps * fpt / 1e12,
                "mfu": tps * fpt / (peak * 1e12) if peak else None,
                "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if ctx.device == "cuda" else None,
                "last_losses": {k: v for k, v in step.history[-1].items() if k.startswith("loss_")},
            }
        )
    model = optimizer = step = senses = None  # free the device memory before the next part
    if ctx.device == "cuda":
        torch.cuda.empty_cache()
    first = results[0]
    summary = {k: first[k] for k in ("batch", "seq_len", "tokens_per_s", "mfu", "peak_mem_gib")}
    return {
        "status": "measured",
        "summary": summary,
        "results": results,
        "model": what,
        "parameters": n_params,
        "trainable_parameters": sum(p.numel() for p in params),
        "loss": train_cfg["loss"],
        "autocast": str(autocast_dtype(train_cfg.get("precision", "auto"), ctx.device)),
        "peak_tflops_bf16_dense": peak,
        "flops_formula": FLOPS_FORMULA,
        "warmup_steps": warmup,
        "timed_steps": timed,
    }


def ctx_device_name(ctx: Context) -> str:
    if ctx.device != "cuda":
        return "cpu"
    import torch

    return torch.cuda.get_device_name(0)
