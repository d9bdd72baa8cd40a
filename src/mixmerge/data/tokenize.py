"""From an ``Example`` to token ids with the prompt masked out of the loss, and packing into rows.

Prompt and target are tokenised separately and concatenated, so the prompt ids are exactly the ids the
model sees at generation time (tokenising the joined text could merge tokens across the boundary).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from mixmerge.data.example import Example, render_prompt, render_target

IGNORE_INDEX = -100  # label value that the causal-LM loss skips


def tokenize_example(example: Example, tokenizer, prompt_style: str, max_length: int) -> dict[str, list[int]]:
    """``{"input_ids", "labels"}`` for one example; prompt positions in ``labels`` are ``IGNORE_INDEX``.

    The target ends with EOS (chat style: the template's end-of-turn token from ``render_target``), so the
    model learns to stop. Too long: the prompt keeps its *last* tokens (at least half of ``max_length``
    when it needs them) and the target is cut at the end.
    """
    if max_length < 2:
        raise ValueError(f"task.max_length={max_length} must be at least 2 (one prompt and one target token)")
    prompt = render_prompt(example, tokenizer, prompt_style)
    target = render_target(example, tokenizer, prompt_style)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id if getattr(tokenizer, "add_bos_token", False) else None
    if bos is not None and (not prompt_ids or prompt_ids[0] != bos):
        prompt_ids = [bos, *prompt_ids]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    if eos is not None and (not target_ids or target_ids[-1] != eos):
        target_ids = [*target_ids, eos]
    if not prompt_ids:
        raise ValueError(f"example {example.id} renders to an empty prompt; every example needs a prompt")
    if len(prompt_ids) + len(target_ids) > max_length:
        keep_target = min(len(target_ids), max_length - min(len(prompt_ids), max_length // 2))
        keep_prompt = max_length - keep_target
        prompt_ids, target_ids = prompt_ids[-keep_prompt:], target_ids[:keep_target]
    return {
        "input_ids": [*prompt_ids, *target_ids],
        "labels": [IGNORE_INDEX] * len(prompt_ids) + list(target_ids),
    }


def pack_first_fit(lengths: Sequence[int], capacity: int, *, seed: int) -> list[tuple[int, ...]]:
    """Group example indices into rows of at most ``capacity`` tokens (first fit in a seeded order).

    Returns one tuple of indices per row. Deterministic for a seed; every index appears exactly once.
    """
    order = list(range(len(lengths)))
    random.Random(f"{seed}:pack").shuffle(order)
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"a sequence of {n} tokens exceeds the row capacity {capacity}")
        for r, room in enumerate(free):
            if n <= room:
                rows[r].append(i)
                free[r] -= n
                break
        else:
            rows.append([i])
            free.append(capacity - n)
    return [tuple(r) for r in rows]


def bucket_by_length(lengths: Sequence[int], batch_size: int, *, seed: int, window: int = 50) -> list[list[int]]:
    """Batches of similar length: shuffle, sort within windows of ``window`` batches, shuffle the batches."""
    order = list(range(len(lengths)))
    rng = random.Random(f"{seed}:bucket")
    rng.shuffle(order)
    span = batch_size * window
    batches = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: lengths[i])
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def padding_fraction(row_lengths_per_batch: Sequence[Sequence[int]]) -> float:
    """Share of the tokens in padded batch tensors that are padding (each batch padded to its longest row)."""
    padded = sum(len(rows) * max(rows) for rows in row_lengths_per_batch if rows)
    real = sum(sum(rows) for rows in row_lengths_per_batch)
    return 0.0 if padded == 0 else 1.0 - real / padded
