import gzip
import json

from mixmerge.data.decontaminate import build_index, humaneval_file, load_index
from mixmerge.data.stdlib import build_corpus, corpus_config


def test_humaneval_index_has_all_problems():
    idx = load_index()
    with gzip.open(humaneval_file(), "rt") as f:
        rows = [json.loads(line) for line in f]
    names = {r["entry_point"] for r in rows}
    assert len(rows) == 164 and len(names) == 158  # a few entry points repeat (e.g. two `add`)
    assert idx.names == frozenset(names)
    assert idx.sources == ("humaneval",)


def test_index_flags_name_or_13gram_overlap():
    idx = build_index([("foo", "def foo(a, b):\n    return sorted(set(a) & set(b), key=lambda v: -v)[0]\n")])
    assert idx.is_contaminated("foo", "def foo(): pass")
    # renamed but the same 13+ tokens, reformatted
    assert idx.is_contaminated("bar", "def bar(a,b):\n  return sorted(set(a)&set(b),key=lambda v:-v)[0]")
    assert not idx.is_contaminated("bar", "def bar(a, b):\n    return a + b\n")


def _planted_root(tmp_path):
    """A fake stdlib: a renamed HumanEval solution, a same-named function, and a clean function."""
    with gzip.open(humaneval_file(), "rt") as f:
        problem = json.loads(f.readline())
    stolen = (problem["prompt"] + problem["canonical_solution"]).replace(problem["entry_point"], "close_pairs")
    (tmp_path / "stolen.py").write_text(stolen)
    (tmp_path / "named.py").write_text(
        "def has_close_elements(items):\n    \"\"\"Tell whether items are close together.\"\"\"\n"
        "    a = 1\n    b = 2\n    return a + b + len(items)\n"
    )
    (tmp_path / "clean.py").write_text(
        "def tidy(path):\n    \"\"\"Remove trailing spaces from every line of a file.\"\"\"\n"
        "    with open(path) as f:\n        lines = [line.rstrip() for line in f]\n"
        "    with open(path, 'w') as f:\n        f.write('\\n'.join(lines))\n"
    )
    return tmp_path


def test_build_drops_planted_humaneval_functions(tmp_path):
    cfg = corpus_config({"root": str(_planted_root(tmp_path)), "valid_fraction": 0, "test_fraction": 0})
    corpus, stats = build_corpus(cfg, load_index())
    kept = [e.id for t in corpus.values() for e in t["train"]]
    assert stats["dropped_contaminated"] == 2
    assert len(kept) == 1 and kept[0].startswith("stdlib:clean:tidy:")
    corpus_plain, stats_plain = build_corpus(cfg, None)  # without the index, all three survive
    assert sum(len(t["train"]) for t in corpus_plain.values()) == 3


def test_mbpp_file_in_hub_schema_is_indexed(tmp_path):
    mbpp = tmp_path / "mbpp.jsonl"
    mbpp.write_text(json.dumps({
        "task_id": 2, "text": "Write a function to find the shared elements from the given two lists.",
        "code": "def similar_elements(test_tup1, test_tup2):\n  res = tuple(set(test_tup1) & set(test_tup2))\n  return (res) ",
        "test_list": ["assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))"],
    }) + "\n")
    idx = load_index(humaneval=False, mbpp_path=str(mbpp))
    assert idx.sources == ("mbpp",) and idx.names == frozenset({"similar_elements"})
    assert idx.is_contaminated("similar_elements", "def similar_elements(a, b): pass")
    assert idx.is_contaminated("common", "def common(test_tup1, test_tup2):\n    res = tuple(set(test_tup1) & set(test_tup2))")
    assert not idx.is_contaminated("common", "def common(a, b):\n    return set(a) | set(b)")
    both = load_index(mbpp_path=str(mbpp))
    assert both.sources == ("humaneval", "mbpp") and "similar_elements" in both.names and "add" in both.names
