"""The student's training forward as one module, so DDP wraps (and synchronises) exactly what the loss runs.

DistributedDataParallel all-reduces gradients only for a backward that follows *its own* ``forward`` (that call
prepares the reducer and broadcasts buffers). Calling the wrapped model's decoder directly trains every rank on its
own shard with no gradient exchange, and rank 0 then saves a student that saw half the data at half the batch.
"""

from __future__ import annotations

import torch

from dskd.teacher.model import final_hidden_and_logits


class HiddenAndLogits(torch.nn.Module):
    """``forward(input_ids) -> (last hidden state after the final norm, logits)`` of a HF causal LM."""

    def __init__(self, lm: torch.nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return final_hidden_and_logits(self.lm, input_ids)


def training_forward(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` itself when it is (a DDP wrapper of) :class:`HiddenAndLogits`, else a HiddenAndLogits around it."""
    return model if isinstance(getattr(model, "module", model), HiddenAndLogits) else HiddenAndLogits(model)


def language_model(model: torch.nn.Module) -> torch.nn.Module:
    """The HF causal LM inside whatever wraps it for training (DDP, :class:`HiddenAndLogits`)."""
    inner = getattr(model, "module", model)
    return inner.lm if isinstance(inner, HiddenAndLogits) else inner
