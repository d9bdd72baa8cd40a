import ast

import pytest

from mixmerge.data.decontaminate import load_index
from mixmerge.data.stdlib import (
    build_corpus,
    corpus_config,
    ensure_corpus,
    extract_functions,
    split_of,
    stdlib_root,
)
from mixmerge.data.text import code_tokens, ngrams

SOURCE = '''
import os


def top(a, b=1):
    """Add two numbers together.

    Longer description.
    """
    # a comment
    c = a + b
    return c


class Box:
    def method(self, x):
        """Scale x by the box size."""
        y = x * self.size
        return y

    def nodoc(self):
        return 1

    def onlydoc(self):
        """Nothing else."""
'''


def test_extract_functions_cuts_header_and_body():
    fns = {f.qualname: f for f in extract_functions(SOURCE, "mod")}
    assert set(fns) == {"top", "Box.method"}
    top = fns["top"]
    assert top.header.startswith("def top(a, b=1):\n    \"\"\"Add two numbers together.")
    assert top.header.endswith('    """\n')
    assert top.body == "    # a comment\n    c = a + b\n    return c\n"
    assert top.signature == "def top(a, b=1):\n"
    method = fns["Box.method"]
    assert method.header == 'def method(self, x):\n    """Scale x by the box size."""\n'  # dedented
    ast.parse(method.header + method.body)  # a method becomes a valid top-level function
    assert method.docstring == "Scale x by the box size."


def test_body_hash_ignores_comments_and_formatting():
    a = next(extract_functions('def f(x):\n    """Doc."""\n    return x+1\n', "m"))
    b = next(extract_functions('def g(y):\n    """Other."""\n    # note\n    return (x + 1)\n', "m"))
    c = next(extract_functions('def h(x):\n    """Doc."""\n    return x + 2\n', "m"))
    assert a.body_hash == b.body_hash != c.body_hash


def test_split_of_depends_only_on_module():
    assert split_of("json.decoder", 0.1, 0.1) == split_of("json.decoder", 0.1, 0.1)
    splits = [split_of(f"pkg.m{i}", 0.1, 0.1) for i in range(2000)]
    assert 0.07 < splits.count("test") / 2000 < 0.13
    assert 0.07 < splits.count("valid") / 2000 < 0.13


def test_small_root_build_is_deterministic_and_well_formed():
    cfg = corpus_config({"root": str(stdlib_root() / "json")})
    first, stats = build_corpus(cfg, None)
    second, _ = build_corpus(cfg, None)
    assert first == second
    assert stats["files"] == 5  # json/__init__, decoder, encoder, scanner, tool
    for task, splits in first.items():
        for examples in splits.values():
            for ex in examples:
                assert ex.task == task
                if task == "codegen":
                    ast.parse(ex.prompt + ex.target)  # signature + docstring + body is valid Python
                else:
                    assert '"""' not in ex.prompt and len(code_tokens(ex.target)) >= 3


def test_unknown_builder_key_names_the_field():
    with pytest.raises(ValueError, match="unknown keys.*max_body_line"):
        corpus_config({"source": "stdlib", "max_body_line": 3})


def test_full_stdlib_corpus_is_split_by_module_disjoint_and_clean(store):
    path, manifest = ensure_corpus({"source": "stdlib"}, store)
    assert manifest["python"].startswith("CPython-3.")
    assert manifest["decontaminated_against"] == ["humaneval"]
    counts = manifest["counts"]
    for task in ("codegen", "codesum"):
        assert counts[task]["train"] > 500 and counts[task]["valid"] > 50 and counts[task]["test"] > 50
    from mixmerge.data.stdlib import read_jsonl

    data = {t: {s: read_jsonl(path / t / f"{s}.jsonl") for s in ("train", "valid", "test")} for t in counts}
    # no module in two splits, across both tasks
    module_split = {}
    for splits in data.values():
        for s, exs in splits.items():
            for ex in exs:
                module = ex.id.split(":")[1]
                assert module_split.setdefault(module, s) == s
    # codegen and codesum pools share no function (normalised-body hash) and no prompt
    hashes = {t: {ex.id.rsplit(":", 1)[1] for exs in splits.values() for ex in exs} for t, splits in data.items()}
    assert hashes["codegen"].isdisjoint(hashes["codesum"])
    assert sum(len(h) for h in hashes.values()) == sum(c for tc in counts.values() for c in tc.values())
    # decontaminated: no HumanEval entry point name, no shared 13-gram
    idx = load_index()
    for splits in data.values():
        for exs in splits.values():
            for ex in exs:
                name = ex.id.split(":")[2].rsplit(".", 1)[-1]
                assert name not in idx.names
                assert idx.grams.isdisjoint(ngrams(code_tokens(ex.prompt + ex.target), 13))
    # cached: the second call reuses the artifact
    path2, manifest2 = ensure_corpus({"source": "stdlib"}, store)
    assert path2 == path and manifest2["data_hash"] == manifest["data_hash"]
