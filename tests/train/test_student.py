"""Student construction: layer choice, renumbering for the KV cache, freezing switches, save/reload."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from dskd.train.student import build_student, freeze, resolve_layers, select_layers


def test_select_layers_modes():
    assert select_layers("first", 2, 4) == [0, 1]
    assert select_layers("block_influence", 2, 4, [0.9, 0.1, 0.05, 0.6]) == [0, 3]
    assert select_layers([1, 3], 2, 4) == [1, 3]
    with pytest.raises(ValueError, match="outside 1..4"):
        select_layers("first", 5, 4)
    with pytest.raises(ValueError, match="needs the teacher cache"):
        select_layers("block_influence", 2, 4, None)
    with pytest.raises(ValueError, match="distinct increasing"):
        select_layers([3, 1], 2, 4)


def test_resolve_layers_reads_the_cache_scores(tiny_teacher_dir, tmp_path):
    (tmp_path / "block_influence.json").write_text(json.dumps({"scores": [0.5, 0.01, 0.2, 0.9]}))
    student = {"n_layers": 2, "layers": "block_influence", "n_trainable_layers": "all"}
    assert resolve_layers(student, tiny_teacher_dir, tmp_path)["layers"] == [0, 3]
    with pytest.raises(ValueError, match="block_influence.json is missing"):
        resolve_layers(student, tiny_teacher_dir, tmp_path / "nowhere")


def test_renumbered_student_generates_with_kv_cache_like_a_full_forward(tiny_teacher_dir, tmp_path):
    student = build_student(tiny_teacher_dir, 3, "all", layers=[0, 2, 3]).eval()
    attn_idx = [layer.self_attn.layer_idx for layer in student.get_decoder().layers]
    assert attn_idx == [0, 1, 2] and student.config.num_hidden_layers == 3
    prompt = torch.tensor([[5, 17, 230, 41]])
    with torch.no_grad():
        cached = student.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True)
        ids = prompt
        for _ in range(8):  # greedy, recomputing the whole sequence each step (no cache)
            nxt = student(input_ids=ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
    assert torch.equal(cached, ids)
    # Saved and reloaded with plain from_pretrained: same weights, same logits.
    student.save_pretrained(tmp_path / "s", safe_serialization=True)
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "s").eval()
    with torch.no_grad():
        assert torch.allclose(again(input_ids=prompt).logits, student(input_ids=prompt).logits, atol=1e-5)


def test_kept_layers_are_the_teachers(tiny_teacher_dir):
    teacher = build_student(tiny_teacher_dir, 4, 0)
    student = build_student(tiny_teacher_dir, 2, 0, layers=[1, 3])
    t_layers, s_layers = teacher.get_decoder().layers, student.get_decoder().layers
    for s, t in ((0, 1), (1, 3)):
        assert torch.equal(s_layers[s].mlp.up_proj.weight, t_layers[t].mlp.up_proj.weight)


def test_freeze_all_layers_keeps_embeddings_frozen_unless_asked(tiny_teacher_dir):
    model = build_student(tiny_teacher_dir, 3, "all")
    assert all(p.requires_grad for p in model.get_decoder().layers.parameters())
    assert not model.get_input_embeddings().weight.requires_grad
    assert not model.get_decoder().norm.weight.requires_grad
    freeze(model, 1, train_final_norm=True, train_embeddings=True)
    layers = model.get_decoder().layers
    assert [any(p.requires_grad for p in layer.parameters()) for layer in layers] == [False, False, True]
    assert model.get_decoder().norm.weight.requires_grad and model.get_input_embeddings().weight.requires_grad
    with pytest.raises(ValueError, match="exceeds the student's 3 layers"):
        freeze(model, 4)
