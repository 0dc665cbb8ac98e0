"""train.grad_allreduce: two gloo ranks (127.0.0.1) all-reduce a hand-checkable gradient in fp32 or in bf16."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from dskd.train.allreduce import apply_grad_allreduce
from tests.servers import free_port

# Inputs whose gradients are not representable in bf16, so the two modes give different, checkable numbers.
INPUTS = (torch.tensor([[1.001, -2.003, 0.3337]]), torch.tensor([[0.7771, 1.2345, -3.1419]]))


def _model() -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2, bias=False)


def _local_grad(x: torch.Tensor) -> torch.Tensor:
    model = _model()
    model(x).pow(2).sum().backward()
    return model.weight.grad.clone()


def _rank(rank: int, port: int, mode: str, out: str) -> None:
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        model = DistributedDataParallel(_model())
        registered = apply_grad_allreduce(model, mode)
        model(INPUTS[rank]).pow(2).sum().backward()
        save_file(
            {"grad": model.module.weight.grad.contiguous(), "hooked": torch.tensor(registered)},
            f"{out}/rank{rank}.safetensors",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("mode", ["fp32", "bf16"])
def test_two_ranks_average_gradients_in_the_chosen_dtype(mode: str, tmp_path: Path):
    mp.spawn(_rank, args=(free_port(), mode, str(tmp_path)), nprocs=2, join=True)
    g0, g1 = (_local_grad(x) for x in INPUTS)
    exact = (g0 + g1) / 2
    # The hook: each rank casts to bf16 and halves (exact in bf16); the bf16 sum is cast back to fp32.
    rounded = (g0.bfloat16().float() / 2 + g1.bfloat16().float() / 2).bfloat16().float()
    assert not torch.allclose(rounded, exact, rtol=1e-5, atol=0)  # the case tells the two modes apart
    expected = exact if mode == "fp32" else rounded
    for r in (0, 1):
        got = load_file(str(tmp_path / f"rank{r}.safetensors"))
        assert bool(got["hooked"]) is (mode == "bf16")
        torch.testing.assert_close(got["grad"], expected, rtol=1e-6, atol=0)


def test_a_model_without_ddp_is_left_alone_and_a_bad_mode_is_refused():
    assert apply_grad_allreduce(_model(), "bf16") is False
    with pytest.raises(ValueError, match="train.grad_allreduce='fp16': use fp32 or bf16"):
        apply_grad_allreduce(_model(), "fp16")
