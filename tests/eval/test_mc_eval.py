"""The WordNet lexical probe (scored with the harness's log-likelihood: dskd.eval.loglik)."""

from __future__ import annotations

import pytest
import torch

from dskd.eval.lexical_probe import build_probe_items, is_heldout_word, score_probe
from dskd.lexicon.wordnet import DEBIAN_WORDNET_DIR, load_wordnet


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The tiny model's ops are far too small to gain from intra-op threads, and on a shared, oversubscribed
    2-core box two OpenMP threads made the scoring tests ~30x slower (6-9 s instead of 0.2 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_model(tiny_teacher_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_teacher_dir, dtype=torch.float32).eval()


# --- lexical probe -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wordnet(tmp_path_factory):
    try:
        return load_wordnet(cache_dir=tmp_path_factory.mktemp("wn"))
    except FileNotFoundError:
        pytest.skip(f"no WordNet (NLTK data or Debian files in {DEBIAN_WORDNET_DIR})")


def test_is_heldout_word_is_a_fixed_fifth():
    words = [f"word{i}" for i in range(5000)]
    share = sum(map(is_heldout_word, words)) / len(words)
    assert 0.17 < share < 0.23
    assert is_heldout_word("Happy ") == is_heldout_word("happy")


def test_probe_items(wordnet, smollm_tokenizer, tiny_model):
    from dskd.eval.lexical_probe import _lexicon

    items = build_probe_items(wordnet, smollm_tokenizer, n_items=12, seed=0)
    assert items == build_probe_items(wordnet, smollm_tokenizer, n_items=12, seed=0)
    assert items != build_probe_items(wordnet, smollm_tokenizer, n_items=12, seed=1)
    syn, ant = _lexicon(wordnet, True)
    kinds = [it.subject for it in items]
    assert kinds == ["antonym"] * 12 + ["unrelated"] * 12
    answers = [it.answer for it in items]
    assert 0 in answers and 1 in answers  # the synonym's position is shuffled
    for it in items:
        head = it.question.split('"')[1]
        assert is_heldout_word(head)
        synonym, other = it.choices[it.answer], it.choices[1 - it.answer]
        assert synonym in syn[head] and synonym not in ant.get(head, set())
        if it.subject == "antonym":
            assert other in ant[head]
        else:
            assert other not in syn[head] | ant.get(head, set()) | {head}
            assert abs(len(other) - len(synonym)) <= 1
        for word in it.choices:
            assert len(smollm_tokenizer(f" {word}", add_special_tokens=False)["input_ids"]) <= 3
    res = score_probe(tiny_model, smollm_tokenizer, items[:3] + items[12:15])
    assert set(res) == {"syn_vs_antonym", "syn_vs_unrelated"} and all(r["n"] == 3 for r in res.values())


def test_training_lexicon_without_heldout_words_cannot_teach_the_probe(wordnet, smollm_tokenizer):
    from dskd.eval.lexical_probe import drop_heldout_pairs
    from dskd.lexicon.wordnet import wordnet_pairs

    # Hand case: any pair with a held-out word on either side goes, the rest stays.
    kept = next(w for w in ("alpha", "beta", "gamma", "delta") if not is_heldout_word(w))
    gone = next(w for w in (f"w{i}" for i in range(100)) if is_heldout_word(w))
    assert drop_heldout_pairs({(kept, gone), (gone, kept), (kept, kept)}) == {(kept, kept)}
    syn, ant = wordnet_pairs(wordnet, include_similar=True)
    train_words = {w for pair in drop_heldout_pairs(syn) | drop_heldout_pairs(ant) for w in pair}
    items = build_probe_items(wordnet, smollm_tokenizer, n_items=40, seed=3)
    heads = {it.question.split('"')[1] for it in items}
    assert heads and not heads & train_words  # no probe head word reaches the training lexicon
    assert len(drop_heldout_pairs(syn)) > 0.5 * len(syn)  # ~(4/5)^2 of pairs survive
