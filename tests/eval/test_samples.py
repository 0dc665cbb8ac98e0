"""Greedy samples: generate (KV cache) must give exactly the argmax-by-argmax continuation of full forwards."""

import torch


def test_greedy_continuations_equal_manual_argmax_loop(tiny_teacher_dir, smollm_tokenizer):
    from dskd.eval.samples import greedy_continuations
    from dskd.teacher.model import load_causal_lm

    model = load_causal_lm(tiny_teacher_dir)
    prompts = ["The capital of France is", "Water"]
    out = greedy_continuations(model, smollm_tokenizer, prompts, max_new_tokens=6)
    assert [o["prompt"] for o in out] == prompts
    for o in out:
        ids = smollm_tokenizer(o["prompt"], return_tensors="pt").input_ids
        with torch.no_grad():
            for _ in range(6):  # no cache: the whole sequence each time
                next_id = model(input_ids=ids).logits[0, -1].argmax()
                ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
        n_prompt = smollm_tokenizer(o["prompt"], return_tensors="pt").input_ids.shape[1]
        assert o["continuation"] == smollm_tokenizer.decode(ids[0, n_prompt:], skip_special_tokens=True)
