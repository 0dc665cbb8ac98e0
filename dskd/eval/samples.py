"""Greedy continuations of fixed prompts: the quickest check a user makes of a model ("does it say Paris?"),
recorded beside the metrics for the teacher, the untrained student and every trained student."""

from __future__ import annotations

import torch


@torch.no_grad()
def greedy_continuations(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[dict[str, str]]:
    """[{prompt, continuation}] with greedy decoding (KV cache on), one prompt at a time so no padding is involved.

    Greedy, not sampled: the text is reproducible and comparable between models and runs."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
        generated = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        )
        text = tokenizer.decode(generated[0, ids.shape[1] :], skip_special_tokens=True)
        out.append({"prompt": prompt, "continuation": text})
    return out
