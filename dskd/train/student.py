"""Student construction: the teacher truncated to its first layers, only the top ones trainable (the paper's
recipe), or a fresh narrower model of the same vocabulary (our extension, with a projection for the sense loss)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from dskd.teacher.model import load_causal_lm


def decoder_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The list of transformer blocks of a HF decoder LM (Llama/Mistral/Qwen layout)."""
    layers = getattr(model.get_decoder(), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(f"{type(model).__name__}: cannot find decoder layers; use a Llama-style teacher")
    return layers


def truncate_and_freeze(model: PreTrainedModel, n_layers: int, n_trainable: int) -> PreTrainedModel:
    """Keep the first ``n_layers`` blocks; freeze everything but the top ``n_trainable`` of them.

    Embeddings, lm_head and the final norm stay frozen (method.md §5).
    """
    layers = decoder_layers(model)
    if n_layers > len(layers):
        raise ValueError(f"student.n_layers={n_layers} exceeds the teacher's {len(layers)} layers; lower it")
    model.get_decoder().layers = torch.nn.ModuleList(list(layers)[:n_layers])
    model.config.num_hidden_layers = n_layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:n_layers]
    for param in model.parameters():
        param.requires_grad_(False)
    for layer in list(model.get_decoder().layers)[n_layers - n_trainable :] if n_trainable else []:
        for param in layer.parameters():
            param.requires_grad_(True)
    return model


def check_same_vocabulary(teacher_dir: str | Path, student_dir: str | Path) -> None:
    """Refuse a student whose tokenizer differs from the teacher's: logits and token-keyed senses would not align."""
    from dskd.teacher.model import load_tokenizer

    teacher, student = load_tokenizer(teacher_dir), load_tokenizer(student_dir)
    if teacher.get_vocab() != student.get_vocab():
        raise ValueError(
            f"student.init_path '{student_dir}' has a tokenizer of {len(student)} tokens that differs from the "
            f"teacher's ({len(teacher)}): DSKD needs the teacher's vocabulary; pick a student of the same family"
        )


def build_student(
    teacher_dir: str | Path,
    n_layers: int,
    n_trainable: int,
    hidden_size: int | None = None,
    intermediate_size: int | None = None,
    seed: int = 0,
    init_path: str | Path | None = None,
) -> PreTrainedModel:
    """The student model in fp32 (CPU training; DDP/AMP handle device and precision later).

    Default: the teacher truncated to ``n_layers``; ``init_path``: another local model of the same tokenizer,
    truncated the same way; ``hidden_size``: a fresh narrower model with the teacher's vocabulary.
    """
    if init_path is not None:
        check_same_vocabulary(teacher_dir, init_path)
        model = load_causal_lm(init_path, dtype="float32")
        return truncate_and_freeze(model, n_layers, n_trainable).train()
    if hidden_size is None:
        model = load_causal_lm(teacher_dir, dtype="float32")
        return truncate_and_freeze(model, n_layers, n_trainable).train()
    # Narrower student: same tokenizer/vocab as the teacher, fresh weights, everything trainable.
    config = copy.deepcopy(AutoConfig.from_pretrained(teacher_dir))
    config.hidden_size = hidden_size
    config.intermediate_size = intermediate_size or 4 * hidden_size
    config.num_hidden_layers = n_layers
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:n_layers]
    heads = max(1, hidden_size // getattr(config, "head_dim", 64))
    config.num_attention_heads = heads
    config.num_key_value_heads = heads
    config.head_dim = hidden_size // heads
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).train()


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Only the parameters that train (what a checkpoint needs to hold)."""
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
