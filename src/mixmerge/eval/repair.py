"""The code-repair metric: exact match of greedy repairs with the fixed function, after normalisation.

``repair_exact_match`` is the number; ``evaluate_repairs`` is the task table's evaluator for ``repair``
(reads ``eval.repair``: enabled, limit, max_new_tokens).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from mixmerge.data.example import Example, render_prompt
from mixmerge.data.repair import exact_match
from mixmerge.eval.generate import generate
from mixmerge.eval.problems import seeded_subset
from mixmerge.eval.suite import EvalPart
from mixmerge.eval.uncertainty import Sample, unique_ids

# Where a completion-style repair ends: the next top-level statement or comment.
_STOPS = ("\n# ", "\nclass ", "\ndef ", "\n@", "\nif __name__")


def _cut(text: str) -> str:
    """The generated function: a fenced block's content, else everything before the next top-level statement."""
    stripped = text.lstrip()
    if stripped.startswith("```"):
        body = stripped.split("\n", 1)[1] if "\n" in stripped else ""
        return body.split("```", 1)[0]
    for stop in _STOPS:
        i = text.find(stop, 1)
        if i >= 0:
            text = text[:i]
    return text


def _repairs(model, tokenizer, examples: Sequence[Example], *, max_new_tokens: int, batch_size: int,
             prompt_style: str) -> tuple[list[str], list[str], list[bool]]:
    prompts = [render_prompt(ex, tokenizer, prompt_style) for ex in examples]
    outputs = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                       stop=list(_STOPS) if prompt_style == "completion" else [], desc="repair")
    completions = [out[0] for out in outputs]
    hits = [exact_match(_cut(c), ex.target) for c, ex in zip(completions, examples, strict=True)]
    return prompts, completions, hits


def repair_exact_match(model, tokenizer, examples: Sequence[Example], *, max_new_tokens: int, batch_size: int = 8,
                       prompt_style: str = "completion") -> float:
    """Fraction of examples whose greedy generation equals the fixed function after ``normalize_code``."""
    if not examples:
        return float("nan")
    _, _, hits = _repairs(model, tokenizer, examples, max_new_tokens=max_new_tokens, batch_size=batch_size,
                          prompt_style=prompt_style)
    return sum(hits) / len(examples)


def evaluate_repairs(model, tokenizer, examples: Sequence[Example], *, task: str, eval_cfg: Mapping,
                     style: str) -> dict[str, EvalPart]:
    """``<task>/exact_match`` on a seeded subset of the held-out repairs, when ``eval.repair.enabled``."""
    cfg = dict(eval_cfg.get("repair") or {})
    if not cfg.get("enabled", False) or not examples:
        return {}
    started = time.perf_counter()
    subset = seeded_subset(list(examples), cfg.get("limit"), int(eval_cfg.get("seed", 0)))
    prompts, completions, hits = _repairs(model, tokenizer, subset, max_new_tokens=int(cfg.get("max_new_tokens", 256)),
                                          batch_size=int(eval_cfg.get("batch_size", 8)), prompt_style=style)
    records = [{"id": ex.id, "prompt": p, "completion": c, "exact_match": h}
               for ex, p, c, h in zip(subset, prompts, completions, hits, strict=True)]
    metrics = {f"{task}/exact_match": sum(hits) / len(subset)}
    ids = unique_ids([ex.id for ex in subset])
    samples = {f"{task}/exact_match": Sample.of_scores({i: float(h) for i, h in zip(ids, hits, strict=True)})}
    return {task: EvalPart(metrics, records, time.perf_counter() - started, samples)}
