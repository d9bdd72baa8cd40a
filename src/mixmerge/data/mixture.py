"""The data mixture: the union of the specialists' training examples in configured proportions.

The mixture never invents or repeats data: it takes the largest subset of the specialists' *train*
examples whose proportions match ``weights`` (by example count or by token count), keeps whole
tasks whenever the weights match the tasks' natural sizes (equal caps + equal weights = exactly the union),
and shuffles the result by seed.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping

from mixmerge.data.example import Example

log = logging.getLogger(__name__)

BY = ("examples", "tokens")


def example_tokens(example: Example, tokenizer) -> int:
    """Tokens of prompt + target as plain text (the mixture's unit when ``by=tokens``)."""
    return len(tokenizer(example.prompt + example.target, add_special_tokens=False)["input_ids"])


def _sizes(examples: list[Example], by: str, tokenizer) -> list[int]:
    if by == "examples":
        return [1] * len(examples)
    return [example_tokens(e, tokenizer) for e in examples]


def build_mixture(
    splits: Mapping, weights: Mapping[str, float] | None, *, by: str, seed: int, tokenizer=None
) -> list[Example]:
    """The mixed training set drawn from ``splits[task].train``; ``weights=None`` means every example.

    With weights ``w_t`` (normalised) and task sizes ``S_t`` (examples or tokens), the mixture's total
    size is ``T = min_t S_t / w_t`` and task ``t`` contributes a seeded-random prefix of its examples
    worth ``w_t * T`` — the largest mixture with those proportions that needs no repetition.
    """
    if by not in BY:
        raise ValueError(f"task.mixture.by={by!r} is not one of {BY}")
    if by == "tokens" and tokenizer is None:
        raise ValueError("task.mixture.by=tokens needs the tokenizer; pass tokenizer= or use by=examples")
    if weights is None:
        weights = {name: 1.0 for name in splits}
        natural = True
    else:
        natural = False
    missing = sorted(set(weights) - set(splits))
    if missing:
        raise ValueError(f"task.mixture.weights names {missing}, but task.tasks only has {sorted(splits)}")
    if any(float(w) < 0 for w in weights.values()) or sum(float(w) for w in weights.values()) <= 0:
        raise ValueError(f"task.mixture.weights={dict(weights)} must be non-negative with a positive sum")
    active = {t: float(w) for t, w in weights.items() if float(w) > 0}
    total_w = sum(active.values())
    share = {t: w / total_w for t, w in active.items()}

    ordered, sizes = {}, {}
    for task in sorted(active):
        examples = list(splits[task].train)
        if not examples:
            raise ValueError(f"task {task!r} has no training examples to mix; check task.max_train_examples")
        random.Random(f"{seed}:mixture:{task}").shuffle(examples)
        ordered[task] = examples
        sizes[task] = _sizes(examples, by, tokenizer)

    mixed: list[Example] = []
    taken_size = {}
    total = None if natural else min(sum(sizes[t]) / share[t] for t in active)
    for task in sorted(active):
        if total is None:
            count = len(ordered[task])
        else:
            budget = share[task] * total * (1 + 1e-9)
            count, used = 0, 0
            for size in sizes[task]:
                if used + size > budget:
                    break
                used += size
                count += 1
        mixed += ordered[task][:count]
        taken_size[task] = sum(sizes[task][:count])
    random.Random(f"{seed}:mixture").shuffle(mixed)
    grand = sum(taken_size.values())
    log.info(
        "mixture by %s: %s (realised shares %s of %d %s)",
        by,
        {t: sum(1 for e in mixed if e.task == t) for t in sorted(active)},
        {t: round(v / grand, 4) for t, v in taken_size.items()},
        grand,
        by,
    )
    return mixed


def realised_shares(examples: list[Example], *, by: str, tokenizer=None) -> dict[str, float]:
    """Each task's share of ``examples`` by example count or tokens (for logs and tests)."""
    totals: dict[str, int] = {}
    for ex, size in zip(examples, _sizes(examples, by, tokenizer), strict=True):
        totals[ex.task] = totals.get(ex.task, 0) + size
    grand = sum(totals.values())
    return {t: v / grand for t, v in sorted(totals.items())}
