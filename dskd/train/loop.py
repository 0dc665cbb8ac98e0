"""The student training loop body, framework-free: Ray Train (or anything else) supplies a WorkerContext.

Loss modes (method.md §4): ``ce`` = CE only; ``kd`` = α·T²·KL + CE; ``dskd`` = kd + λ·sense.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file, save_file
from transformers import get_cosine_schedule_with_warmup

from dskd.host_memory import keep_freed_memory
from dskd.senses.dictionary import SenseTable
from dskd.store.remote import ArtifactStore
from dskd.teacher.model import device_runs_bf16_natively
from dskd.train.allreduce import apply_grad_allreduce
from dskd.train.data import Batch, collate, count_rows, iter_rows, shard_paths
from dskd.train.forward import HiddenAndLogits, language_model, training_forward
from dskd.train.fused_loss import ce_and_kd_t1
from dskd.train.losses import SenseProjection, ce_loss, kd_loss, sampled_kd_loss, sense_loss
from dskd.train.student import build_student_from_section, trainable_state


class WorkerContext(Protocol):
    """What the loop needs from the distributed runtime."""

    rank: int
    world_size: int
    device: str

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module: ...
    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None: ...
    def checkpoint_dir(self) -> Path | None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def scratch_dir(self) -> Path: ...


@dataclass
class TrainJob:
    """Everything a worker needs: artifact paths and the student/train/senses sections as dicts."""

    teacher_dir: str
    annotate_dir: str
    cache_dir: str
    index_dir: str
    kd_temperature: float
    student: dict[str, Any]  # ``layers`` resolved to teacher indices (or "first")
    train: dict[str, Any]
    kappa: int
    # Shared store to fetch the artifact dirs above from on a node that lacks them (multi-node, no shared FS).
    storage_uri: str | None = None
    artifact_dirs: list[str] = field(default_factory=list)
    kd_mode: str = "topk"  # how the cache holds the teacher distribution (its capture says which)


def compute_losses(
    model: torch.nn.Module,
    batch: Batch,
    senses: torch.Tensor | None,
    cfg: dict[str, Any],
    temperature: float,
    projection: torch.nn.Module | None = None,
    kd_mode: str = "topk",
) -> dict[str, torch.Tensor]:
    """Loss terms for one batch; ``total`` is the one to backpropagate."""
    # Through the (DDP-wrapped) module's own forward: DDP all-reduces gradients only after that (forward.py).
    hidden, logits = training_forward(model)(batch.input_ids)  # hidden: post final norm
    # Position t predicts input_ids[t+1]: the last position has no target.
    logits_t = logits[:, :-1].reshape(-1, logits.shape[-1])
    targets = batch.input_ids[:, 1:].reshape(-1)
    zero = logits.new_zeros(())
    out = {"kd": zero, "sense": zero}
    if cfg["loss"] in ("kd", "dskd"):
        k = batch.topk_ids.shape[-1]
        teacher = (
            batch.topk_logits[:, :-1].reshape(-1, k),
            batch.topk_ids[:, :-1].reshape(-1, k),
            batch.lse[:, :-1].reshape(-1),
        )
        if float(temperature) == 1.0:
            # One pass over the vocabulary for both terms (fused_loss.py: ~40 % of a CPU step otherwise).
            out["ce"], out["kd"] = ce_and_kd_t1(
                logits_t, targets, *teacher, alpha=cfg["alpha"], sampled=kd_mode == "sampled"
            )
        else:
            kd = sampled_kd_loss if kd_mode == "sampled" else kd_loss
            out["ce"] = ce_loss(logits_t, targets)
            out["kd"] = kd(logits_t, *teacher, temperature=temperature, alpha=cfg["alpha"])
    else:
        out["ce"] = ce_loss(logits_t, targets)
    if cfg["loss"] == "dskd" and senses is not None and batch.sense_pos.numel() > 0:
        s = hidden[batch.sense_batch, batch.sense_pos]
        if projection is not None:
            s = projection(s)
        pos_mask, neg_mask = batch.pos_rows >= 0, batch.neg_rows >= 0
        pos = senses[batch.pos_rows.clamp(min=0)]
        neg = senses[batch.neg_rows.clamp(min=0)]
        rows = sense_loss(
            s, pos, pos_mask, neg, neg_mask, beta_p=cfg["beta_p"], beta_n=cfg["beta_n"], margin=cfg["margin"]
        )
        out["sense"] = rows.mean()
    # The ce arm trains on the corpus tokens alone; kd/dskd weigh them against the teacher (train.ce_weight).
    ce_weight = 1.0 if cfg["loss"] == "ce" else float(cfg.get("ce_weight", 1.0))
    out["total"] = ce_weight * out["ce"] + out["kd"] + (cfg["lam"] * out["sense"] if cfg["loss"] == "dskd" else zero)
    return out


def _save_checkpoint(path: Path, model, optimizer, projection, step: int, epoch: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    state = trainable_state(language_model(model))
    if projection is not None:
        state.update({f"__projection__.{k}": v for k, v in projection.state_dict().items()})
    save_file(state, str(path / "trainable.safetensors"))
    # Optimizer moments as safetensors too (no pickle): "<param index>.<state name>".
    opt_state = {
        f"{i}.{name}": (t if torch.is_tensor(t) else torch.tensor(t)).detach().cpu().contiguous()
        for i, st in optimizer.state_dict()["state"].items()
        for name, t in st.items()
    }
    save_file(opt_state, str(path / "optimizer.safetensors"))
    (path / "state.json").write_text(json.dumps({"step": step, "epoch": epoch}))


def _load_checkpoint(path: Path, model, optimizer, projection) -> tuple[int, int]:
    inner = language_model(model)
    state = load_file(str(path / "trainable.safetensors"))
    bad = [name for name, tensor in state.items() if not torch.isfinite(tensor).all()]
    if bad:  # a run that diverged before the non-finite-step guard existed: resuming it would only train NaN
        raise ValueError(
            f"checkpoint {path} holds non-finite weights ({bad[0]}, {len(bad)} tensors): the run it came from "
            "diverged; delete the run's checkpoint dir under train.storage_path to restart it from step 0"
        )
    proj = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("__projection__.")}
    inner.load_state_dict({k: v for k, v in state.items() if not k.startswith("__projection__.")}, strict=False)
    if projection is not None and proj:
        projection.load_state_dict(proj)
    flat = load_file(str(path / "optimizer.safetensors"))
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in flat.items():
        idx, name = key.split(".", 1)
        opt_state.setdefault(int(idx), {})[name] = tensor
    sd = optimizer.state_dict()
    sd["state"] = opt_state
    optimizer.load_state_dict(sd)
    meta = json.loads((path / "state.json").read_text())
    return meta["step"], meta["epoch"]


def run_training(job: TrainJob, ctx: WorkerContext, on_step: Callable[[int], None] | None = None) -> None:
    """Train the student on this worker's share of the cache; rank 0 writes checkpoints and the final model."""
    cfg = job.train
    if job.storage_uri:
        ArtifactStore(job.storage_uri).ensure_all_local(job.artifact_dirs)
    keep_freed_memory()  # per-step tensors reuse the heap instead of page-faulting (host_memory.py)
    torch.manual_seed(cfg["seed"])
    torch.set_num_threads(cfg["threads_per_worker"])
    model = build_student_from_section(job.teacher_dir, job.student, seed=cfg["seed"])
    senses = None
    projection = None
    if cfg["loss"] == "dskd":
        senses = torch.from_numpy(SenseTable.load(Path(job.index_dir) / "senses.safetensors").vectors).to(ctx.device)
        if senses.shape[1] != model.config.hidden_size:
            if not job.student.get("project_to_teacher"):
                raise ValueError(
                    f"student width {model.config.hidden_size} != teacher width {senses.shape[1]}: "
                    "set student.project_to_teacher=true to learn a projection for the sense loss"
                )
            projection = SenseProjection(model.config.hidden_size, senses.shape[1]).to(ctx.device)
    model = ctx.prepare_model(HiddenAndLogits(model))  # DDP around the forward the loss runs (forward.py)
    apply_grad_allreduce(model, cfg.get("grad_allreduce", "fp32"))
    params = [p for p in model.parameters() if p.requires_grad]
    if projection is not None:
        params += list(projection.parameters())
    lr = cfg["lr"] * ctx.world_size  # reference: lr × world size
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg["weight_decay"])

    paths = shard_paths(Path(job.annotate_dir), Path(job.cache_dir), Path(job.index_dir))
    per_rank = count_rows(paths) // ctx.world_size
    accum = cfg.get("grad_accum", 1)
    steps_per_epoch = math.ceil(per_rank / (cfg["batch_size"] * accum))
    if steps_per_epoch == 0:
        raise ValueError(f"{count_rows(paths)} sequences for {ctx.world_size} workers: lower train.num_workers")
    total_steps = steps_per_epoch * cfg["epochs"]
    if cfg.get("max_steps"):
        total_steps = min(total_steps, cfg["max_steps"])
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(cfg["warmup_frac"] * total_steps), total_steps)

    step, start_epoch = 0, 0
    history: list[dict[str, float]] = []
    resume = ctx.checkpoint_dir()
    if resume is not None:
        step, start_epoch = _load_checkpoint(resume, model, optimizer, projection)
        if (resume / "history.json").is_file():  # steps before the checkpoint: the history covers each once
            history = json.loads((resume / "history.json").read_text())
        for _ in range(step):
            scheduler.step()
    step_fn = TrainStep(model, optimizer, scheduler, projection, senses, cfg, job, ctx, total_steps, history)
    for epoch in range(start_epoch, cfg["epochs"]):
        rows = iter_rows(paths, ctx.rank, ctx.world_size, job.kappa, epoch_seed=cfg["seed"] * 1000 + epoch)
        skip = step - epoch * steps_per_epoch  # optimizer steps already done in this epoch (resume)
        for index, micro in enumerate(_chunks(_chunks(rows, cfg["batch_size"]), accum)):
            if index < skip:
                continue
            step = step_fn([collate(rows).to(ctx.device) for rows in micro], step, epoch)
            if on_step is not None:
                on_step(step)
            if step >= total_steps:
                break
        if step >= total_steps:
            break
    _finish(model, projection, ctx, step, history)


def _chunks(items, size: int):
    """Consecutive lists of ``size`` items; the last one may be shorter."""
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def autocast_dtype(precision: str, device: str) -> torch.dtype | None:
    """bf16 for autocast where asked for, or under "auto" where the device runs it natively (a bf16 GPU, an
    AVX512-BF16/AMX CPU); None = plain fp32."""
    if precision == "bf16" or (precision == "auto" and device_runs_bf16_natively(device)):
        return torch.bfloat16
    return None


# Optimizer steps skipped for a non-finite gradient (weights untouched, as AMP's loss scaler does) before the run
# fails as diverged: one bad batch is survivable, a run that keeps producing NaN is not worth its remaining steps.
MAX_NONFINITE_STEPS = 3


@dataclass
class TrainStep:
    """One optimizer step over a list of micro-batches: accumulate, clip, step, log, checkpoint."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    projection: torch.nn.Module | None
    senses: torch.Tensor | None
    cfg: dict[str, Any]
    job: TrainJob
    ctx: WorkerContext
    total: int
    history: list[dict[str, float]]
    skipped_steps: int = 0  # optimizer steps skipped for a non-finite gradient

    def __call__(self, micro_batches: list[Batch], step: int, epoch: int) -> int:
        cfg, ctx = self.cfg, self.ctx
        t0 = time.perf_counter()
        dtype = autocast_dtype(cfg.get("precision", "auto"), ctx.device)
        device_type = "cuda" if ctx.device.startswith("cuda") else "cpu"
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        tokens = 0
        for i, batch in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            # DDP: all-reduce gradients once, on the last micro-batch of the step.
            sync = nullcontext() if last or not hasattr(self.model, "no_sync") else self.model.no_sync()
            with sync, torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None):
                losses = compute_losses(
                    self.model, batch, self.senses, cfg, self.job.kd_temperature, self.projection, self.job.kd_mode
                )
                (losses["total"] / len(micro_batches)).backward()
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach()) / len(micro_batches)
            tokens += batch.input_ids.numel()
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        # The norm is measured even without clipping (max_norm=inf): a NaN/inf gradient must never reach the
        # weights, or every later step is NaN. DDP has all-reduced the grads, so every rank decides the same.
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.get("max_grad_norm") or float("inf")))
        if math.isfinite(grad_norm):
            self.optimizer.step()
        else:
            self.skipped_steps += 1
            if self.skipped_steps > MAX_NONFINITE_STEPS:
                raise FloatingPointError(
                    f"training diverged: {self.skipped_steps} optimizer steps with a non-finite gradient (last at "
                    f"step {step + 1}); lower train.lr or train.max_grad_norm, or resume from the last checkpoint"
                )
        self.scheduler.step()
        step += 1
        seconds = time.perf_counter() - t0
        metrics = {f"loss_{k}": v for k, v in sums.items()}
        metrics.update(
            step_seconds=seconds,
            lr=self.scheduler.get_last_lr()[0],
            epoch=epoch,
            grad_norm=grad_norm,
            skipped_steps=float(self.skipped_steps),
            tokens=float(tokens * ctx.world_size),  # this step, all ranks (equal shares)
            tokens_per_second=tokens * ctx.world_size / seconds,
            total_steps=float(self.total),
            bf16_autocast=float(dtype is not None),  # what precision "auto" resolved to on this device
        )
        if ctx.rank == 0:
            ctx.log_metrics(metrics, step)
            self.history.append({**metrics, "step": step})
        if step % cfg["checkpoint_every"] == 0 and step < self.total:
            # Report to the runtime only with a checkpoint: Ray Train's report is a barrier behind a one-slot queue
            # its controller drains every 2 s, so a report per step floors every step at ~2 s (measured: a 1.5 s
            # CPU step took 2.01 s). Per-step metrics go out through log_metrics instead.
            checkpoint = None
            if ctx.rank == 0:  # rank 0 alone writes checkpoints (trainable weights + optimizer moments)
                checkpoint = ctx.scratch_dir() / f"ckpt-{step}"
                _save_checkpoint(checkpoint, self.model, self.optimizer, self.projection, step, epoch)
                (checkpoint / "history.json").write_text(json.dumps(self.history))  # restored on resume
            ctx.report({**metrics, "step": step}, checkpoint)  # every rank: the same number of reports
        return step


def _finish(model, projection, ctx: WorkerContext, step: int, history: list[dict[str, float]]) -> None:
    """Rank 0 saves the final student as a HF dir (safetensors) in the last checkpoint."""
    checkpoint = None
    if ctx.rank == 0:
        checkpoint = ctx.scratch_dir() / "final"
        inner = language_model(model)
        # Saved in the teacher's storage dtype: half the bytes of fp32, same as the teacher on disk.
        inner.to(torch.bfloat16).save_pretrained(checkpoint / "student", safe_serialization=True)
        if projection is not None:
            save_file(projection.state_dict(), str(checkpoint / "projection.safetensors"))
        (checkpoint / "state.json").write_text(json.dumps({"step": step, "final": True}))
        # Every step once: a resumed run starts from the history saved in its checkpoint.
        (checkpoint / "history.json").write_text(json.dumps(history))
    ctx.report({"step": step, "done": 1.0}, checkpoint)
