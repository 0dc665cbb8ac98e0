"""Two-rank DDP (gloo, 127.0.0.1) through the loop's TrainStep gives every rank the gradient of the union batch.

Regression: the loop called the DDP-wrapped model's decoder directly, bypassing ``DistributedDataParallel.forward``,
so gradients were never all-reduced; each rank trained on its half alone and the saved student lost ~9 held-out ppl.
"""

from __future__ import annotations

import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from dskd.train.forward import HiddenAndLogits
from tests.train.test_loop import CFG, _Ctx, _one_step, collate_pair, make_batch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_step(rank: int, teacher_dir: str, port: int, out: str) -> None:
    """One TrainStep on this rank's half (seed = rank) of a DDP-wrapped student; its gradients go to ``out``."""
    from torch.nn.parallel import DistributedDataParallel
    from transformers import get_constant_schedule

    from dskd.train.loop import TrainJob, TrainStep
    from dskd.train.student import build_student

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        student = build_student(Path(teacher_dir), n_layers=2, n_trainable="all")
        model = DistributedDataParallel(HiddenAndLogits(student))
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        cfg = {**CFG, "loss": "kd", "checkpoint_every": 10**9, "max_grad_norm": None}
        ctx = _Ctx()
        ctx.rank, ctx.world_size = rank, 2
        job = TrainJob("", "", "", "", 2.0, {}, cfg, 3)
        batch, _ = make_batch(49152, 64, 4, seed=rank)
        TrainStep(model, opt, get_constant_schedule(opt), None, None, cfg, job, ctx, 10, [])([batch], 0, 0)
        grads = {n: p.grad.contiguous() for n, p in student.named_parameters() if p.grad is not None}
        save_file(grads, f"{out}/rank{rank}.safetensors")
    finally:
        dist.destroy_process_group()


def test_two_ranks_step_on_the_gradient_of_the_union_batch(tiny_teacher_dir, tmp_path: Path):
    mp.spawn(_rank_step, args=(str(tiny_teacher_dir), _free_port(), str(tmp_path)), nprocs=2, join=True)
    union, _ = _one_step(
        tiny_teacher_dir, [collate_pair(make_batch(49152, 64, 4, seed=0)[0], make_batch(49152, 64, 4, seed=1)[0])]
    )
    expected = {n: p.grad for n, p in union.named_parameters() if p.grad is not None}
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]
    assert len(expected) > 10 and set(ranks[0]) == set(ranks[1]) == set(expected)
    for name, grad in expected.items():
        # DDP averages the two ranks' mean losses = the mean over the union (equal token counts per rank).
        for got in ranks:
            assert torch.allclose(got[name], grad, rtol=1e-4, atol=1e-7), name
