"""Student construction: a subset of the teacher's layers (the first L as in the paper, or the L of highest block
influence, our default), top or all of them trainable; or a fresh narrower model of the same vocabulary (our
extension, with a projection for the sense loss)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from dskd.teacher.block_influence import top_layers
from dskd.teacher.model import decoder_layers, load_causal_lm

LayerSpec = Literal["first", "block_influence"] | list[int]


def select_layers(
    spec: LayerSpec, n_layers: int, n_teacher_layers: int, scores: list[float] | None = None
) -> list[int]:
    """Teacher layer indices the student keeps, in model order.

    ``first``: the first ``n_layers`` (the paper). ``block_influence``: the ``n_layers`` with the highest block
    influence (``scores``, one per teacher layer, from the teacher pass). A list: exactly those layers.
    """
    if not 1 <= n_layers <= n_teacher_layers:
        raise ValueError(
            f"student.n_layers={n_layers} is outside 1..{n_teacher_layers} (the teacher's layers); lower it"
        )
    if spec == "first":
        return list(range(n_layers))
    if spec == "block_influence":
        if scores is None or len(scores) != n_teacher_layers:
            raise ValueError(
                "student.layers=block_influence needs the teacher cache's block-influence scores "
                "(cache.block_influence_tokens > 0); or set student.layers=first"
            )
        return top_layers(scores, n_layers)
    kept = [int(i) for i in spec]
    if sorted(set(kept)) != kept or not kept or kept[0] < 0 or kept[-1] >= n_teacher_layers:
        raise ValueError(f"student.layers={kept} must be distinct increasing indices in 0..{n_teacher_layers - 1}")
    return kept


def resolve_layers(student: dict[str, Any], teacher_dir: str | Path, cache_dir: str | Path) -> dict[str, Any]:
    """The student section with ``layers`` resolved to teacher indices (block influence from the teacher cache's
    ``block_influence.json``); unchanged for a fresh narrower student, which keeps no teacher layers."""
    if student.get("hidden_size") is not None:
        return {**student, "layers": "first"}
    spec = student.get("layers", "first")
    source = Path(student.get("init_path") or teacher_dir)
    n_source = json.loads((source / "config.json").read_text())["num_hidden_layers"]
    scores = None
    if spec == "block_influence":
        if student.get("init_path"):
            raise ValueError(
                "student.layers=block_influence scores the teacher's layers, not student.init_path's; "
                "set student.layers=first or list the layers"
            )
        bi_file = Path(cache_dir) / "block_influence.json"
        if not bi_file.is_file():
            raise ValueError(
                f"{bi_file} is missing: the teacher cache did not measure block influence; "
                "set cache.block_influence_tokens > 0 or student.layers=first"
            )
        scores = json.loads(bi_file.read_text())["scores"]
    return {**student, "layers": select_layers(spec, student["n_layers"], n_source, scores)}


def keep_layers(model: PreTrainedModel, kept: list[int]) -> PreTrainedModel:
    """Keep only the decoder blocks ``kept`` (teacher indices), renumbered 0..len-1 for the KV cache."""
    layers = decoder_layers(model)
    if kept and kept[-1] >= len(layers):
        raise ValueError(f"student keeps layer {kept[-1]} but the model has {len(layers)} layers; lower it")
    new = [layers[i] for i in kept]
    for index, layer in enumerate(new):
        # The KV cache is indexed by layer_idx: a kept layer 24 must now write slot 14, not 24.
        for module in (layer, getattr(layer, "self_attn", None)):
            if module is not None and hasattr(module, "layer_idx"):
                module.layer_idx = index
    model.get_decoder().layers = torch.nn.ModuleList(new)
    model.config.num_hidden_layers = len(new)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in kept]
    return model


def freeze(
    model: PreTrainedModel,
    n_trainable: int | Literal["all"],
    train_embeddings: bool = False,
    train_lm_head: bool = False,
    train_final_norm: bool = False,
) -> PreTrainedModel:
    """Freeze everything, then unfreeze the top ``n_trainable`` blocks (``all``: every block) and the switches.

    With tied embeddings (SmolLM2), embeddings and lm_head are one tensor: either switch trains it.
    """
    layers = list(decoder_layers(model))
    for param in model.parameters():
        param.requires_grad_(False)
    count = len(layers) if n_trainable == "all" else int(n_trainable)
    if count > len(layers):
        raise ValueError(f"student.n_trainable_layers={count} exceeds the student's {len(layers)} layers; lower it")
    chosen = [*(layers[len(layers) - count :] if count else [])]
    if train_embeddings:
        chosen.append(model.get_input_embeddings())
    if train_lm_head:
        chosen.append(model.get_output_embeddings())
    if train_final_norm:
        chosen.append(model.get_decoder().norm)
    for module in chosen:
        for param in module.parameters():
            param.requires_grad_(True)
    return model


def truncate_and_freeze(model: PreTrainedModel, n_layers: int, n_trainable: int | Literal["all"]) -> PreTrainedModel:
    """The paper's student: keep the first ``n_layers`` blocks, train the top ``n_trainable`` (method.md §5)."""
    n_total = len(decoder_layers(model))
    if n_layers > n_total:
        raise ValueError(f"student.n_layers={n_layers} exceeds the teacher's {n_total} layers; lower it")
    return freeze(keep_layers(model, list(range(n_layers))), n_trainable)


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
    n_trainable: int | Literal["all"],
    hidden_size: int | None = None,
    intermediate_size: int | None = None,
    seed: int = 0,
    init_path: str | Path | None = None,
    layers: list[int] | None = None,
    train_embeddings: bool = False,
    train_lm_head: bool = False,
    train_final_norm: bool = False,
) -> PreTrainedModel:
    """The student model in fp32 (DDP/autocast handle device and precision later).

    Default: the teacher's blocks ``layers`` (teacher indices; None = the first ``n_layers``); ``init_path``:
    another local model of the same tokenizer, cut the same way; ``hidden_size``: a fresh narrower model with
    the teacher's vocabulary (everything trains).
    """
    if hidden_size is None:
        source = init_path if init_path is not None else teacher_dir
        if init_path is not None:
            check_same_vocabulary(teacher_dir, init_path)
        model = load_causal_lm(source, dtype="float32")
        kept = list(layers) if layers is not None else list(range(n_layers))
        if len(kept) != n_layers:
            raise ValueError(
                f"student.layers lists {len(kept)} layers but student.n_layers={n_layers}; make them agree"
            )
        n_total = len(decoder_layers(model))
        if n_layers > n_total:
            raise ValueError(f"student.n_layers={n_layers} exceeds the teacher's {n_total} layers; lower it")
        model = keep_layers(model, kept)
        model = freeze(model, n_trainable, train_embeddings, train_lm_head, train_final_norm)
        return model.train()
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


def build_student_from_section(teacher_dir: str | Path, student: dict[str, Any], seed: int = 0) -> PreTrainedModel:
    """:func:`build_student` from a student config section whose ``layers`` is already resolved to a list
    (or ``first``; the task layer resolves ``block_influence`` with the teacher cache's scores)."""
    layers = student.get("layers", "first")
    if layers == "block_influence":
        raise ValueError("student.layers=block_influence must be resolved to indices before building the student")
    return build_student(
        teacher_dir,
        student["n_layers"],
        student["n_trainable_layers"],
        student.get("hidden_size"),
        student.get("intermediate_size"),
        seed=seed,
        init_path=student.get("init_path"),
        layers=None if layers == "first" else list(layers),
        train_embeddings=student.get("train_embeddings", False),
        train_lm_head=student.get("train_lm_head", False),
        train_final_norm=student.get("train_final_norm", False),
    )


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Only the parameters that train (what a checkpoint needs to hold)."""
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
