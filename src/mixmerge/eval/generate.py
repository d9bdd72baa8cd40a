"""Batched generation: left padding, KV cache, stop strings; greedy or sampled.

Prompts are sorted by length before batching so each batch pads little; outputs come back in the
caller's order. Greedy decoding gives pass@1; sampling (``n`` per prompt, temperature, top-p) gives the
samples the unbiased pass@k estimator needs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm


def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 8,
    n: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop: Sequence[str] = (),
    seed: int = 0,
    desc: str | None = None,
    seconds_out: list[float] | None = None,
) -> list[list[str]]:
    """``n`` continuations per prompt (new text only, special tokens dropped), in prompt order.

    ``temperature == 0`` means greedy (then ``n`` must be 1). ``stop`` strings end a sequence early;
    the text may still contain them (post-processing cuts precisely). When ``seconds_out`` is a list it
    receives each prompt's share of its batch's wall time.
    """
    sample = temperature > 0
    if not sample and n != 1:
        raise ValueError(f"eval.n={n} samples need eval.temperature > 0 (greedy gives one answer)")
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"eval.batch_size={batch_size} and max_new_tokens={max_new_tokens} must be >= 1")
    pad_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues at the right edge of every row
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    outputs: list[list[str]] = [[] for _ in prompts]
    seconds = [0.0] * len(prompts)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    generator_seed = torch.random.initial_seed()
    torch.manual_seed(seed)
    kwargs = {"do_sample": sample, "max_new_tokens": max_new_tokens, "num_return_sequences": n,
              "pad_token_id": tokenizer.pad_token_id, "use_cache": True}
    if sample:
        kwargs.update(temperature=float(temperature), top_p=float(top_p))
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if stop:
        kwargs.update(stop_strings=list(stop), tokenizer=tokenizer)
    try:
        with torch.inference_mode():
            bar = tqdm(total=len(prompts), desc=desc or "generate", disable=desc is None, leave=False)
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                                add_special_tokens=False).to(device)
                started = time.perf_counter()
                out = model.generate(**enc, **kwargs)
                for i in idx:
                    seconds[i] = (time.perf_counter() - started) / len(idx)
                new = out[:, enc["input_ids"].shape[1]:]
                texts = tokenizer.batch_decode(new, skip_special_tokens=True)
                for j, i in enumerate(idx):
                    outputs[i] = texts[j * n:(j + 1) * n]
                bar.update(len(idx))
            bar.close()
    finally:
        tokenizer.padding_side = pad_side
        model.train(was_training)
        torch.manual_seed(generator_seed)
    if seconds_out is not None:
        seconds_out[:] = seconds
    return outputs
