"""How DDP all-reduces the student's gradients: in their own dtype (fp32) or compressed to bf16 on the wire.

Why an option: with every layer trainable the embedded default all-reduces ~53 M fp32 gradients (212 MB) per step,
which is most of what a second worker costs on a CPU box (bench/README.md, Ray 2 workers / 1). Compressing to
bf16 halves those bytes: each bucket is cast to bf16, divided by the world size, summed, and cast back, so every
rank applies the same (bf16-rounded) mean gradient. It changes the numbers the optimizer sees, so it is part of
the train key. The hook is PyTorch's ``bf16_compress_hook`` rewritten in a few lines because that one refuses
any device but CUDA/XPU ("requires CUDA 11+ and NCCL 2.10+", torch 2.13), although gloo sums bf16 on the CPU.
"""

# No ``from __future__ import annotations``: DDP checks the hook's annotations as objects (dist.GradBucket).
from typing import Literal

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

GradAllreduce = Literal["fp32", "bf16"]


def apply_grad_allreduce(model: torch.nn.Module, mode: GradAllreduce) -> bool:
    """Register the comm hook ``mode`` asks for on a DDP ``model``; True when one was registered.

    A model that is not DDP-wrapped (one worker, or a test context) exchanges nothing, so it is left alone.
    """
    if mode not in ("fp32", "bf16"):
        raise ValueError(f"train.grad_allreduce={mode!r}: use fp32 or bf16")
    if mode == "fp32" or not isinstance(model, DistributedDataParallel):
        return False
    model.register_comm_hook(state=None, hook=bf16_mean_hook)
    return True


def bf16_mean_hook(
    process_group: dist.ProcessGroup | None, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """DDP comm hook: all-reduce the bucket's mean in bf16 and write it back into the bucket in its own dtype."""
    group = process_group if process_group is not None else dist.group.WORLD
    buffer = bucket.buffer()
    compressed = buffer.to(torch.bfloat16).div_(group.size())

    def decompress(fut: torch.futures.Future[list[torch.Tensor]]) -> torch.Tensor:
        buffer.copy_(fut.value()[0])  # in place: no second fp32 copy of the bucket
        return buffer

    return dist.all_reduce(compressed, group=group, async_op=True).get_future().then(decompress)
