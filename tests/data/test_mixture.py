from collections import Counter

import pytest

from mixmerge.data import Example, TaskSplits, build_mixture, realised_shares


def _splits(n_gen: int, n_sum: int) -> dict[str, TaskSplits]:
    gen = [Example(f"def g{i}():\n", "    return " + "x + " * (i % 7) + "1\n", "codegen", f"g{i}") for i in range(n_gen)]
    summ = [Example(f"def s{i}():\n    pass\n", "Do nothing at all.", "codesum", f"s{i}") for i in range(n_sum)]
    return {"codegen": TaskSplits("codegen", gen, [], [], "kg"), "codesum": TaskSplits("codesum", summ, [], [], "ks")}


def test_equal_weights_and_sizes_give_exactly_the_union(stdlib_tasks):
    mix = build_mixture(stdlib_tasks, {"codegen": 0.5, "codesum": 0.5}, by="examples", seed=0)
    union = stdlib_tasks["codegen"].train + stdlib_tasks["codesum"].train
    assert Counter(mix) == Counter(union)  # every specialist example, each exactly once
    assert mix != union  # and shuffled


def test_proportions_by_examples_are_exact():
    splits = _splits(100, 100)
    mix = build_mixture(splits, {"codegen": 3, "codesum": 1}, by="examples", seed=0)
    counts = Counter(e.task for e in mix)
    assert counts == {"codegen": 100, "codesum": 33}
    assert set(mix) <= set(splits["codegen"].train) | set(splits["codesum"].train)
    assert len(set(mix)) == len(mix)


def test_natural_mixture_and_zero_weight():
    splits = _splits(30, 70)
    assert Counter(e.task for e in build_mixture(splits, None, by="examples", seed=0)) == {"codegen": 30, "codesum": 70}
    only = build_mixture(splits, {"codegen": 1.0, "codesum": 0.0}, by="examples", seed=0)
    assert Counter(e.task for e in only) == {"codegen": 30}


def test_proportions_by_tokens(stdlib_tasks, tokenizer):
    mix = build_mixture(stdlib_tasks, {"codegen": 0.5, "codesum": 0.5}, by="tokens", seed=0, tokenizer=tokenizer)
    shares = realised_shares(mix, by="tokens", tokenizer=tokenizer)
    assert shares["codegen"] == pytest.approx(0.5, abs=0.01)
    # codesum examples are shorter, so codesum is the binding task and is taken whole
    counts = Counter(e.task for e in mix)
    assert counts["codesum"] == 120 and counts["codegen"] < 120


def test_seeded_order():
    splits = _splits(20, 20)
    a = build_mixture(splits, {"codegen": 1, "codesum": 1}, by="examples", seed=0)
    assert a == build_mixture(splits, {"codegen": 1, "codesum": 1}, by="examples", seed=0)
    assert a != build_mixture(splits, {"codegen": 1, "codesum": 1}, by="examples", seed=1)


def test_mixture_errors_name_the_field():
    splits = _splits(5, 5)
    with pytest.raises(ValueError, match=r"task.mixture.weights names \['repair'\]"):
        build_mixture(splits, {"repair": 1.0}, by="examples", seed=0)
    with pytest.raises(ValueError, match="task.mixture.by='bytes'"):
        build_mixture(splits, {"codegen": 1.0}, by="bytes", seed=0)
    with pytest.raises(ValueError, match="needs the tokenizer"):
        build_mixture(splits, {"codegen": 1.0}, by="tokens", seed=0)
