"""Held-out loss: mean NLL per target token given the prompt, the cheap proxy for sweeps.

The prompt and target are rendered exactly as in training (``render_prompt``/``render_target``),
tokenised separately and concatenated, so prompt tokens can be masked out of the loss precisely.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from mixmerge.data.example import Example, render_prompt, render_target


def tokenize_pair(tokenizer, prompt: str, target: str, max_tokens: int) -> tuple[list[int], int]:
    """Prompt+target token ids (left-truncated to ``max_tokens``) and how many of them are prompt."""
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    t_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    ids = p_ids + t_ids
    overflow = max(0, len(ids) - max_tokens)  # drop the oldest prompt tokens first
    return ids[overflow:], max(0, len(p_ids) - overflow)


def heldout_loss(
    model,
    tokenizer,
    examples: Sequence[Example],
    *,
    prompt_style: str = "completion",
    batch_size: int = 8,
    max_tokens: int = 1024,
    desc: str | None = None,
) -> float:
    """Mean token NLL (nats) of every target token in ``examples``, prompt tokens masked."""
    if not examples:
        raise ValueError("held-out loss needs at least one example")
    pairs = [tokenize_pair(tokenizer, render_prompt(ex, tokenizer, prompt_style),
                           render_target(ex, tokenizer, prompt_style), max_tokens) for ex in examples]
    order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in tqdm(range(0, len(order), batch_size), desc=desc or "held-out loss",
                              disable=desc is None, leave=False):
                batch = [pairs[i] for i in order[start:start + batch_size]]
                width = max(len(ids) for ids, _ in batch)
                input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                attention = torch.zeros((len(batch), width), dtype=torch.long)
                labels = torch.full((len(batch), width), -100, dtype=torch.long)
                for row, (ids, n_prompt) in enumerate(batch):
                    input_ids[row, :len(ids)] = torch.tensor(ids)
                    attention[row, :len(ids)] = 1
                    labels[row, n_prompt:len(ids)] = torch.tensor(ids[n_prompt:])
                # Only positions that predict a target token need logits: the lm_head over a 49k vocabulary
                # at every prompt position would cost more than the transformer itself.
                first = max(0, min(n_prompt for _, n_prompt in batch) - 1)
                keep = torch.arange(first, width - 1)
                logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                               logits_to_keep=keep.to(device)).logits
                shift_logits = logits.float()
                shift_labels = labels[:, keep + 1].to(device)
                nll = torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]),
                                                        shift_labels.reshape(-1), ignore_index=-100,
                                                        reduction="sum")
                total_nll += float(nll)
                total_tokens += int((shift_labels != -100).sum())
    finally:
        model.train(was_training)
    if total_tokens == 0:
        raise ValueError("held-out examples have no target tokens left; raise eval.loss.max_tokens")
    return total_nll / total_tokens
