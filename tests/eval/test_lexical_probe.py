"""The WordNet lexical probe (held-out words, item construction, contrast scoring) and its log-likelihood scorer."""

from __future__ import annotations

import math
import types

import pytest
import torch

from dskd.eval.lexical_probe import (
    ProbeItem,
    _lexicon,
    build_probe_items,
    drop_heldout_pairs,
    is_heldout_word,
    item_scores,
    score_probe,
)
from dskd.eval.loglik import pair_logliks
from dskd.lexicon.wordnet import DEBIAN_WORDNET_DIR, load_wordnet, wordnet_pairs


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models gain nothing from intra-op threads on a shared 2-core box (and OpenMP oversubscription hurts)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def wordnet(tmp_path_factory):
    try:
        return load_wordnet(cache_dir=tmp_path_factory.mktemp("wn"))
    except FileNotFoundError:
        pytest.skip(f"no WordNet (NLTK data or Debian files in {DEBIAN_WORDNET_DIR})")


@pytest.fixture(scope="module")
def tiny_model(tiny_teacher_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_teacher_dir, dtype=torch.float32).eval()


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


# --- held-out words ------------------------------------------------------------------------------------------------


def test_is_heldout_word_is_a_fixed_fifth():
    words = [f"word{i}" for i in range(5000)]
    share = sum(map(is_heldout_word, words)) / len(words)
    assert 0.17 < share < 0.23
    assert is_heldout_word("Happy ") == is_heldout_word("happy")


def test_training_lexicon_without_heldout_words_cannot_teach_the_probe(wordnet, smollm_tokenizer):
    # Hand case: any pair with a held-out word on either side goes, the rest stays.
    kept = next(w for w in ("alpha", "beta", "gamma", "delta") if not is_heldout_word(w))
    gone = next(w for w in (f"w{i}" for i in range(100)) if is_heldout_word(w))
    assert drop_heldout_pairs({(kept, gone), (gone, kept), (kept, kept)}) == {(kept, kept)}
    syn, ant = wordnet_pairs(wordnet, include_similar=True)
    train_words = {w for pair in drop_heldout_pairs(syn) | drop_heldout_pairs(ant) for w in pair}
    heads = {it.head for it in build_probe_items(wordnet, smollm_tokenizer, n_items=40, seed=3)}
    assert heads and not heads & train_words  # no probe head word reaches the training lexicon
    assert len(drop_heldout_pairs(syn)) > 0.5 * len(syn)  # ~(4/5)^2 of pairs survive


# --- items -----------------------------------------------------------------------------------------------------------


def test_probe_items(wordnet, smollm_tokenizer):
    tok = smollm_tokenizer
    items = build_probe_items(wordnet, tok, n_items=12, seed=0)
    assert items == build_probe_items(wordnet, tok, n_items=12, seed=0)
    assert items != build_probe_items(wordnet, tok, n_items=12, seed=1)
    syn, ant = _lexicon(wordnet, True)
    assert [it.kind for it in items] == ["antonym"] * 12 + ["unrelated"] * 12
    assert {it.answer for it in items} == {0, 1}  # the synonym's position is shuffled
    for it in items:
        assert is_heldout_word(it.head)
        synonym, other = it.choices[it.answer], it.choices[1 - it.answer]
        assert synonym in syn[it.head] and synonym not in ant.get(it.head, set())
        if it.kind == "antonym":
            assert other in ant[it.head] and other not in syn[it.head]
        else:
            assert other not in syn[it.head] | ant.get(it.head, set()) | {it.head} | syn.get(synonym, set())
            assert abs(len(other) - len(synonym)) <= 1
            assert len(_ids(tok, f" {other}")) == len(_ids(tok, f" {synonym}"))
            pos = {s.pos().replace("s", "a") for s in wordnet.synsets(synonym)}
            assert pos & {s.pos().replace("s", "a") for s in wordnet.synsets(other)}
        assert all(len(_ids(tok, f" {w}")) <= 3 for w in it.choices)
    # A head gives both kinds with the same synonym.
    by_head = {(it.head, it.choices[it.answer]) for it in items if it.kind == "antonym"}
    assert any((it.head, it.choices[it.answer]) in by_head for it in items if it.kind == "unrelated")
    assert [it.kind for it in build_probe_items(wordnet, tok, n_items=3, kinds=("unrelated",))] == ["unrelated"] * 3
    with pytest.raises(ValueError, match="unknown probe kind"):
        build_probe_items(wordnet, tok, n_items=3, kinds=("hypernym",))


# --- scoring ---------------------------------------------------------------------------------------------------------


class _CueModel(torch.nn.Module):
    """Uniform next-token logits, except +4 on " warm" once " for" has been read and +4 on " cold" once " opposite"
    has: a model that "knows" warm is a synonym in "another word for hot is" and cold in "the opposite of hot is"."""

    def __init__(self, tok):
        super().__init__()
        self.vocab = len(tok)
        (self.for_id,), (self.opp_id,) = _ids(tok, " for"), _ids(tok, " opposite")
        (self.warm,), (self.cold,) = _ids(tok, " warm"), _ids(tok, " cold")

    def forward(self, input_ids, attention_mask=None):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.warm] += 4.0 * (torch.cumsum(input_ids == self.for_id, 1) > 0)
        logits[..., self.cold] += 4.0 * (torch.cumsum(input_ids == self.opp_id, 1) > 0)
        return types.SimpleNamespace(logits=logits)


def _cue_scorer(model, tok, pairs, batch_size):
    """log p(continuation | context) by one forward per pair (the cue model is no HF model for the harness)."""
    out = []
    for context, continuation in pairs:
        ctx, cont = _ids(tok, context), _ids(tok, continuation)
        logp = torch.log_softmax(model(torch.tensor([ctx + cont])).logits[0], -1)
        out.append(sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont)))
    return out


def test_contrast_scores_match_hand_computation(smollm_tokenizer):
    tok = smollm_tokenizer
    model = _CueModel(tok)
    log_z = math.log(model.vocab - 1 + math.exp(4.0))  # normaliser of a context with one word boosted by +4
    items = [
        ProbeItem("antonym", "hot", ("cold", "warm"), 1),
        ProbeItem("antonym", "hot", ("warm", "cold"), 1),  # a wrong key: the model must get it "wrong"
        ProbeItem("unrelated", "hot", ("table", "warm"), 1),
    ]
    scores = item_scores(model, tok, items, batch_size=2, scorer=_cue_scorer)
    # antonym: log p(x | "another word for hot is") - log p(x | "the opposite of hot is")
    assert scores[0] == pytest.approx((-log_z - (4 - log_z), (4 - log_z) - (-log_z)), abs=1e-4)  # (-4, +4)
    # unrelated: log p(x | "another word for hot is") - log p(x | "the word"), the latter uniform
    log_v = math.log(model.vocab)
    assert scores[2] == pytest.approx((-log_z + log_v, 4 - log_z + log_v), abs=1e-4)
    res = score_probe(model, tok, items, scorer=_cue_scorer)
    assert res["syn_vs_antonym"] == pytest.approx({"acc": 0.5, "stderr": math.sqrt(0.25 / 2), "n": 2})
    assert res["syn_vs_unrelated"] == {"acc": 1.0, "stderr": 0.0, "n": 1}
    # kinds without items are left out
    assert set(score_probe(model, tok, items[:1], scorer=_cue_scorer)) == {"syn_vs_antonym"}


def test_a_tie_counts_as_wrong(smollm_tokenizer, tiny_model):
    same = ProbeItem("unrelated", "hot", ("warm", "warm"), 0)
    assert score_probe(tiny_model, smollm_tokenizer, [same])["syn_vs_unrelated"]["acc"] == 0.0


def test_pair_logliks_are_the_models_continuation_logprobs(tiny_model, smollm_tokenizer):
    tok = smollm_tokenizer
    # the third context ends in a space: the harness moves it to the continuation (" g" is scored)
    requests = [("another word for hot is", " warm"), ("the word", " tablecloth rest"), ("a b c d e f ", "g")]
    expected = []
    for context, continuation in requests:
        context, continuation = context.rstrip(), context[len(context.rstrip()) :] + continuation
        ctx, whole = _ids(tok, context), _ids(tok, context + continuation)
        with torch.no_grad():
            logp = torch.log_softmax(tiny_model(input_ids=torch.tensor([whole])).logits[0].float(), -1)
        expected.append(sum(float(logp[t - 1, whole[t]]) for t in range(len(ctx), len(whole))))
    for batch_size in (1, 3):  # batched with padding == one at a time
        assert pair_logliks(tiny_model, tok, requests, batch_size=batch_size) == pytest.approx(expected, abs=1e-4)
    assert pair_logliks(tiny_model, tok, []) == []
    with pytest.raises(ValueError, match="empty continuation"):
        pair_logliks(tiny_model, tok, [("the word", "")])
