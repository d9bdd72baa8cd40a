"""The repair metric (eval/repair.py): exact match of normalised greedy repairs, directly and as the repair
task's evaluator in the suite."""

from __future__ import annotations

from pathlib import Path

import pytest

import mixmerge.eval.repair as repair
from mixmerge.data.repair_task import load_repair_task
from mixmerge.eval.suite import evaluator_of

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "repair" / "bugfix.jsonl"
REPLIES = [
    "def add(a,b):\n    # fixed\n    return (a + b)\n\ndef extra():\n    pass\n",  # right, then a 2nd function
    "def last(xs):\n    return xs[len(xs)]\n",  # the bug kept
    "```python\ndef is_pos(x):\n    return x > 0\n```",  # right, fenced
    "def count(n):\n    return sum(1 for _ in range(n - 1))\n",  # a new bug
]


@pytest.fixture
def examples():
    cfg = {"source": "repair", "from": "local", "path": str(FIXTURE), "valid_fraction": 0.0, "test_fraction": 0.0,
           "fields": {"buggy": "buggy_code", "fixed": "fixed_code"}, "where": {"language": "python"}}
    return load_repair_task("repair", cfg, None)[0]["train"]


@pytest.fixture
def fake_generate(monkeypatch, examples):
    seen = {}
    by_prompt = {ex.prompt: reply for ex, reply in zip(examples, REPLIES, strict=True)}

    def generate(model, tokenizer, prompts, **kw):
        seen.update(kw, prompts=prompts)
        return [[by_prompt[p]] for p in prompts]

    monkeypatch.setattr(repair, "generate", generate)
    return seen


def test_repair_exact_match_scores_normalised_generations(examples, fake_generate):
    em = repair.repair_exact_match(None, None, examples, max_new_tokens=64, batch_size=2)
    assert em == 0.5
    assert fake_generate["max_new_tokens"] == 64 and fake_generate["batch_size"] == 2
    assert fake_generate["prompts"][0] == examples[0].prompt


def test_the_repair_row_evaluates_through_the_suite(examples, fake_generate):
    evaluate = evaluator_of("repair")
    assert evaluate is repair.evaluate_repairs
    off = evaluate(None, None, examples, task="repair", eval_cfg={}, style="completion")
    assert off == {} and not fake_generate  # eval.repair is off unless enabled: nothing generated
    parts = evaluate(None, None, examples, task="repair", eval_cfg={"repair": {"enabled": True, "limit": None,
                                                                               "max_new_tokens": 32}},
                     style="completion")
    assert list(parts) == ["repair"] and parts["repair"].metrics == {"repair/exact_match": 0.5}
    assert sorted(r["exact_match"] for r in parts["repair"].records) == [False, False, True, True]
    assert fake_generate["max_new_tokens"] == 32
