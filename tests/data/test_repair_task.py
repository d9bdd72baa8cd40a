"""The repair task as data: valid buggy/fixed pairs from the stdlib, disjoint from codegen/codesum; table loader."""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

import pytest

from mixmerge.data.repair import exact_match, normalize_code
from mixmerge.data.repair_task import (
    PROMPT_HEAD,
    PROMPT_TAIL,
    buggy_of,
    load_repair_task,
)
from mixmerge.data.stdlib import load_stdlib_task, split_of

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "repair" / "bugfix.jsonl"
ID = re.compile(r"^repair:[\w.-]+:[\w.]+:[0-9a-f]{10}$")


@pytest.fixture(scope="module")
def embedded(store):
    return load_repair_task("repair", {"source": "repair"}, store)


def _body_dump(function_source: str) -> str:
    fn = ast.parse(textwrap.dedent(function_source)).body[0]
    return ast.dump(ast.Module(body=fn.body, type_ignores=[]))


def test_embedded_examples_are_valid_bugs_of_their_targets(embedded):
    splits, info = embedded
    counts = {s: len(v) for s, v in splits.items()}
    assert counts == info["corpus_counts"] and min(counts.values()) >= 50 and sum(counts.values()) >= 1000
    kinds = {k: v for k, v in info["corpus_stats"].items() if k.startswith("kind_")}
    assert set(kinds) == {"kind_operator_swap", "kind_off_by_one", "kind_comparison_flip"}
    for split, examples in splits.items():
        for ex in examples:
            assert ID.match(ex.id), ex.id
            assert ex.task == "repair" and ex.prompt.startswith(PROMPT_HEAD) and ex.prompt.endswith(PROMPT_TAIL)
            ast.parse(ex.prompt)  # the whole prompt parses (the markers are comments)
            buggy = buggy_of(ex)
            ast.parse(buggy)
            ast.parse(ex.target)
            assert not exact_match(buggy, ex.target), ex.id
            assert normalize_code(buggy).count("\n") == normalize_code(ex.target).count("\n")  # one small edit
            module = ex.id.split(":")[1]
            assert split_of(module, 0.1, 0.1) == split  # same module split as the stdlib corpus


def test_embedded_pool_is_disjoint_from_codegen_and_codesum(embedded, store):
    repair = {_body_dump(ex.target) for exs in embedded[0].values() for ex in exs}
    other = set()
    for task in ("codegen", "codesum"):
        splits, _ = load_stdlib_task(task, {"source": "stdlib"}, store)
        for ex in (e for exs in splits.values() for e in exs):
            try:
                if task == "codegen":
                    other.add(ast.dump(ast.parse(textwrap.dedent(ex.target))))
                else:
                    other.add(_body_dump(ex.prompt))
            except SyntaxError:
                continue
    assert len(other) > 1000 and len(repair) > 1000
    assert repair.isdisjoint(other)
    names = {tuple(ex.id.split(":")[1:3]) for exs in embedded[0].values() for ex in exs}
    for task in ("codegen", "codesum"):
        splits, _ = load_stdlib_task(task, {"source": "stdlib"}, store)
        assert names.isdisjoint({tuple(e.id.split(":")[1:3]) for exs in splits.values() for e in exs})


def test_task_may_have_another_name(store):
    splits, _ = load_repair_task("bugfix", {"source": "repair"}, store)
    assert {ex.task for exs in splits.values() for ex in exs} == {"bugfix"}


def test_local_table_with_field_mapping_and_filter():
    cfg = {"source": "repair", "from": "local", "path": str(FIXTURE), "valid_fraction": 0.0, "test_fraction": 0.0,
           "fields": {"buggy": "buggy_code", "fixed": "fixed_code", "id": "id"}, "where": {"language": "python"}}
    splits, info = load_repair_task("repair", cfg, None)
    train = splits["train"]
    assert [ex.id for ex in train] == ["repair:local:p1", "repair:local:p2", "repair:local:p3", "repair:local:p5"]
    assert splits["valid"] == [] and splits["test"] == []
    # the Java row is filtered out, the comment-only "bug" is not a bug
    assert info["stats"] == {"dropped_filter": 1, "dropped_invalid": 1, "kept": 4}
    assert train[0].prompt == PROMPT_HEAD + "def add(a, b):\n    return a - b\n" + PROMPT_TAIL
    assert train[0].target == "def add(a, b):\n    return a + b\n"


def test_local_per_split_files():
    fields = {"buggy": "buggy_code", "fixed": "fixed_code"}
    cfg = {"source": "repair", "from": "local", "fields": fields,
           "paths": {"train": str(FIXTURE), "valid": str(FIXTURE), "test": str(FIXTURE)}}
    splits, _ = load_repair_task("repair", cfg, None)
    assert {s: len(v) for s, v in splits.items()} == {"train": 5, "valid": 5, "test": 5}  # no filter: Java kept


@pytest.mark.parametrize(("cfg", "message"), [
    ({"from": "local", "path": str(FIXTURE), "fields": {"buggy": "buggy_code"}}, r"fields needs \['fixed'\]"),
    ({"from": "local", "path": str(FIXTURE), "fields": {"buggy": "nope", "fixed": "fixed_code"}},
     "fields.buggy='nope' is not a column"),
    ({"from": "local", "fields": {"buggy": "b", "fixed": "f"}}, "exactly one of path"),
    ({"from": "local", "path": str(FIXTURE), "colour": 1}, r"unknown keys \['colour'\]"),
    ({"from": "ftp"}, "from='ftp' is not one of"),
    ({"from": "hub", "fields": {"buggy": "b", "fixed": "f"}}, "dataset_id is required"),
    ({"mutation_sed": 3}, r"unknown keys \['mutation_sed'\]"),
    ({"kinds": ["typo"]}, r"unknown mutation kinds \['typo'\]"),
])
def test_config_errors_name_the_field(cfg, message):
    with pytest.raises((ValueError, KeyError), match=message):
        load_repair_task("repair", {"source": "repair", **cfg}, None)


def test_hub_dataset_offline_without_cache_names_the_dataset():
    from mixmerge.data.rows import DatasetNotAvailableError

    cfg = {"source": "repair", "from": "hub", "dataset_id": "mixmerge-test/no-such-repair-set", "split": "train",
           "fields": {"buggy": "buggy_code", "fixed": "fixed_code"}}
    with pytest.raises(DatasetNotAvailableError, match="mixmerge-test/no-such-repair-set"):
        load_repair_task("repair", cfg, None)
