"""Block influence on a tiny Llama: hand-checkable against the model's own hidden states; an identity layer has BI 0."""

from __future__ import annotations

import pytest
import torch

from dskd.teacher.block_influence import BlockInfluence, measure_block_influence, top_layers
from dskd.teacher.model import decoder_layers, load_causal_lm


@pytest.fixture()
def tiny(tiny_teacher_dir):
    model = load_causal_lm(tiny_teacher_dir, dtype="float32")
    # Layer 1 becomes the identity: its attention and MLP write nothing into the residual stream.
    layer = decoder_layers(model)[1]
    torch.nn.init.zeros_(layer.self_attn.o_proj.weight)
    torch.nn.init.zeros_(layer.mlp.down_proj.weight)
    return model


def test_identity_layer_has_zero_influence_and_others_match_hidden_states(tiny):
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    stats = BlockInfluence(4)
    with torch.no_grad(), measure_block_influence(tiny, stats):
        tiny(input_ids=ids)
    scores = stats.scores()
    assert stats.count == 24
    assert abs(scores[1]) < 1e-6
    # hidden_states[i] enters layer i (for i < L; the last entry is after the final norm, so stop before it).
    with torch.no_grad():
        hs = tiny(input_ids=ids, output_hidden_states=True).hidden_states
    for i in (0, 2):
        cos = torch.nn.functional.cosine_similarity(hs[i].float(), hs[i + 1].float(), dim=-1)
        assert scores[i] == pytest.approx(1 - float(cos.mean()), abs=1e-5)
    assert all(s > 1e-3 for i, s in enumerate(scores) if i != 1)  # random layers do change their input


def test_merge_of_halves_equals_one_measurement(tiny):
    ids = torch.randint(0, 1000, (4, 8), generator=torch.Generator().manual_seed(1))
    whole, a, b = BlockInfluence(4), BlockInfluence(4), BlockInfluence(4)
    with torch.no_grad():
        with measure_block_influence(tiny, whole):
            tiny(input_ids=ids)
        with measure_block_influence(tiny, a):
            tiny(input_ids=ids[:2])
        with measure_block_influence(tiny, b):
            tiny(input_ids=ids[2:])
    merged = BlockInfluence.from_json(a.merge(b).to_json())
    assert merged.count == whole.count == 32
    assert merged.scores() == pytest.approx(whole.scores(), abs=1e-6)


def test_hooks_are_removed(tiny):
    stats = BlockInfluence(4)
    with torch.no_grad(), measure_block_influence(tiny, stats):
        pass
    tiny(input_ids=torch.zeros(1, 4, dtype=torch.long))
    assert stats.count == 0
    with pytest.raises(ValueError, match="not measured"):
        stats.scores()


def test_top_layers_keeps_highest_in_model_order():
    assert top_layers([0.9, 0.01, 0.5, 0.02, 0.7], 3) == [0, 2, 4]
    assert top_layers([0.1, 0.1, 0.1], 2) == [0, 1]  # ties: the earlier layer
    with pytest.raises(ValueError, match="cannot keep 4 of 3"):
        top_layers([0.1, 0.2, 0.3], 4)
