import json
import time

import pytest

from mixmerge.data import load_task_splits
from mixmerge.data.formats import codexglue_example, kodcode_example, strip_docstring
from mixmerge.data.hub import carve
from mixmerge.data.rows import DatasetNotAvailableError, read_hub_split

LIMITS = {"max_train_examples": None, "max_eval_examples": None}


def _kodcode_cfg(fixtures_dir, **extra):
    return {"source": "hub", "dataset_id": "KodCode/KodCode-V1-SFT-R1", "format": "kodcode", "split": "train",
            "data_files": str(fixtures_dir / "kodcode_v1_sft_r1.jsonl"), **extra}


def _codexglue_cfg(fixtures_dir):
    files = {ours: str(fixtures_dir / f"codexglue_code_to_text_python_{theirs}.jsonl")
             for ours, theirs in (("train", "train"), ("valid", "validation"), ("test", "test"))}
    return {"source": "hub", "dataset_id": "google/code_x_glue_ct_code_to_text", "config": "python",
            "format": "codexglue", "data_files": files}


def test_kodcode_fixture_loads_question_to_solution(store, fixtures_dir):
    ts = load_task_splits("codegen", _kodcode_cfg(fixtures_dir, valid_fraction=0.3, test_fraction=0.3),
                          store=store, seed=0, limits=LIMITS)
    all_ex = ts.train + ts.valid + ts.test
    assert len(all_ex) == 11 and ts.info["dropped_rows"] == 1  # the row with an empty solution
    assert ts.info["dataset_id"] == "KodCode/KodCode-V1-SFT-R1" and ts.info["origin"] == "local file"
    ex = next(e for e in all_ex if e.id == "kodcode:Leetcode_1002_I")
    assert ex.prompt == "Given a list of integers `nums`, return the sum of the even numbers.\n\n"
    assert ex.target == "def sum_even(nums):\n    return sum(n for n in nums if n % 2 == 0)\n"
    assert ex.task == "codegen"
    assert len({e.id for e in all_ex}) == 11
    assert ts.counts() == {"train": 8, "valid": 2, "test": 1}  # carved by a hash of each question_id
    again = load_task_splits("codegen", _kodcode_cfg(fixtures_dir, valid_fraction=0.3, test_fraction=0.3),
                             store=store, seed=0, limits=LIMITS)
    assert again.key == ts.key


def test_codexglue_fixture_maps_code_to_docstring_tokens(store, fixtures_dir):
    ts = load_task_splits("codesum", _codexglue_cfg(fixtures_dir), store=store, seed=0, limits=LIMITS)
    assert ts.counts() == {"train": 6, "valid": 2, "test": 2}
    ex = next(e for e in ts.train if e.id == "codexglue:0")
    assert ex.target == "Turn a title into a URL slug ."
    assert ex.prompt == 'def slugify(text):\n    words = text.lower().split()\n    return "-".join(words)\n'
    broken = next(e for e in ts.train if e.id == "codexglue:5")  # unparseable code: code tokens instead
    assert broken.prompt == "def broken ( x : return x"
    assert all('"""' not in e.prompt and "'''" not in e.prompt for e in ts.train + ts.valid + ts.test)


def test_converters_reject_empty_rows():
    assert kodcode_example({"question": "Q", "solution": "  "}, "codegen") is None
    assert codexglue_example({"code": "def f():\n    return 1", "docstring_tokens": []}, "codesum") is None


def test_strip_docstring_keeps_valid_python():
    assert strip_docstring('def f():\n    """Only a docstring."""') == "def f():\n    pass\n"
    assert strip_docstring("def f(x):\n    return x") == "def f(x):\n    return x\n"
    assert strip_docstring("def f(:") is None


def test_carve_is_stable_and_complete(store, fixtures_dir):
    rows = [json.loads(line) for line in (fixtures_dir / "kodcode_v1_sft_r1.jsonl").read_text().splitlines()]
    exs = [e for e in (kodcode_example(r, "codegen") for r in rows) if e]
    a = carve(exs, 0.3, 0.3)
    b = carve(list(reversed(exs)), 0.3, 0.3)
    assert {s: {e.id for e in v} for s, v in a.items()} == {s: {e.id for e in v} for s, v in b.items()}
    assert sum(len(v) for v in a.values()) == len(exs)


def test_offline_hub_dataset_fails_at_once_naming_the_id(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    started = time.perf_counter()
    with pytest.raises(DatasetNotAvailableError, match=r"KodCode/KodCode-V1-SFT-R1.*load_dataset"):
        list(read_hub_split("KodCode/KodCode-V1-SFT-R1", None, "train"))
    assert time.perf_counter() - started < 20


def test_hub_config_errors_name_the_field(store):
    with pytest.raises(ValueError, match="task.tasks.codegen.dataset_id is required"):
        load_task_splits("codegen", {"source": "hub", "format": "kodcode"}, store=store, seed=0, limits=LIMITS)
    with pytest.raises(ValueError, match=r"unknown keys \['dataset'\]"):
        load_task_splits("codegen", {"source": "hub", "dataset": "x"}, store=store, seed=0, limits=LIMITS)
    with pytest.raises(ValueError, match="task.tasks.codegen.format='csv'"):
        load_task_splits("codegen", {"source": "hub", "dataset_id": "x", "format": "csv", "data_files": "x.jsonl"},
                         store=store, seed=0, limits=LIMITS)
