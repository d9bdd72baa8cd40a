import ast
import bisect
import heapq
import inspect
import statistics
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixmerge.data.repair import KINDS, exact_match, mutate, mutation_sites, normalize_code

SRC = '''def count_below(xs, limit):
    """Count items below limit, ignoring -1 sentinels."""
    total = 0
    for i in range(len(xs)):
        if xs[i] < limit and xs[i] != -1:  # sentinel
            total += 1
    return total * 2 // 2
'''


def _stdlib_functions():
    """Real functions from the standard library: a varied pool of ordinary Python."""
    out = []
    for module in (bisect, heapq, statistics, textwrap):
        for _, fn in inspect.getmembers(module, inspect.isfunction):
            if fn.__module__ == module.__name__:
                out.append(textwrap.dedent(inspect.getsource(fn)))
    return out


POOL = _stdlib_functions()
MUTABLE = [src for src in POOL if mutation_sites(src)]


def test_every_kind_is_found_with_its_position():
    sites = mutation_sites(SRC)
    assert {s.kind for s in sites} == set(KINDS)
    described = {s.description for s in sites}
    assert "comparison flip: < → <=" in described
    assert "comparison flip: != → ==" in described
    assert "augmented assignment swap: += → -=" in described
    assert "operator swap: * → //" in described
    assert "operator swap: // → *" in described
    assert "range bound off by one: len(xs) → len(xs) - 1" in described or \
        "range bound off by one: len(xs) → len(xs) + 1" in described
    assert "off by one: 0 → 1" in described


def test_mutation_is_deterministic_and_local():
    m1, m2 = mutate(SRC, 7), mutate(SRC, 7)
    assert m1 == m2
    assert m1.original == SRC
    diff = [(a, b) for a, b in zip(SRC.splitlines(), m1.source.splitlines(), strict=True) if a != b]
    assert len(diff) == 1  # one line changed; comments and layout kept
    assert "# sentinel" in m1.source


def test_different_seeds_reach_every_kind():
    assert {mutate(SRC, seed).kind for seed in range(40)} == set(KINDS)


def test_restricting_kinds():
    for seed in range(10):
        assert mutate(SRC, seed, kinds=("comparison_flip",)).kind == "comparison_flip"
    with pytest.raises(ValueError, match="unknown mutation kinds"):
        mutate(SRC, 0, kinds=("delete_line",))


def test_no_site_or_no_parse_gives_none():
    assert mutate("def f(x):\n    return x\n", 0) is None
    assert mutate("def f(:\n", 0) is None


def test_f_strings_and_power_are_left_alone():
    src = 'def f(x):\n    return f"{x + 1}" + str(x ** 2)\n'
    sites = mutation_sites(src)
    assert [s.description for s in sites if s.kind == "operator_swap"] == ["operator swap: + → -"]
    assert all(s.start > src.encode().index(b'"', 20) for s in sites)  # nothing inside the f-string


@pytest.mark.parametrize("index", range(len(POOL)))
def test_stdlib_mutants_parse_and_differ(index):
    assert len(POOL) > 40 and len(MUTABLE) > 30
    src = POOL[index]
    for seed in range(5):
        m = mutate(src, seed)
        if m is None:
            assert not mutation_sites(src)
            continue
        ast.parse(m.source)
        assert normalize_code(m.source) != normalize_code(src)
        assert not exact_match(m.source, src)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(MUTABLE), st.integers(0, 2**31))
def test_any_seed_gives_a_valid_different_mutant(src, seed):
    m = mutate(src, seed)
    assert m is not None
    assert normalize_code(m.source) != normalize_code(src)
    assert compile(m.source, "<mutant>", "exec")


def test_exact_match_ignores_comments_layout_and_fences():
    ref = "def f(a, b):\n    return a + b\n"
    assert exact_match("def f(a,b):  # add\n\n    return (a + b)\n", ref)
    assert exact_match("```python\ndef f(a, b):\n    return a+b\n```", ref)
    assert exact_match("    def f(a, b):\n        return a + b\n", ref)  # indented as in a completion
    assert not exact_match("def f(a, b):\n    return a - b\n", ref)
    assert not exact_match("def f(a, b):\n    return b + a\n", ref)


def test_normalize_falls_back_to_whitespace_for_broken_code():
    assert normalize_code("def f(:\n\n    return  1   \n") == "def f(:\n return 1"
    assert exact_match("def f(:\n    return 1", "def f(:\n\n    return    1  ")
    assert not exact_match("def f(:\n    return 1", "def f(:\n    return 2")


def test_byte_offsets_with_non_ascii_text():
    src = 'def greet(n):\n    return "héllo wörld" * n + "…" if n > 0 else ""\n'
    kinds = {mutate(src, seed).description for seed in range(30)}
    assert kinds >= {"operator swap: * → //", "operator swap: + → -", "comparison flip: > → >="}
    for seed in range(30):
        m = mutate(src, seed)
        assert "héllo wörld" in m.source and "…" in m.source
