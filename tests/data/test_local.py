import json

import pytest

from mixmerge.data import load_task_splits, load_tasks

LIMITS = {"max_train_examples": None, "max_eval_examples": None}
FIELDS = {"prompt": "instruction", "target": "response", "id": "uid"}


def test_local_jsonl_with_field_mapping(store, fixtures_dir):
    cfg = {"source": "local", "path": str(fixtures_dir / "local_pairs.jsonl"), "fields": FIELDS,
           "valid_fraction": 0.25, "test_fraction": 0.25}
    ts = load_task_splits("codegen", cfg, store=store, seed=0, limits=LIMITS)
    all_ex = ts.train + ts.valid + ts.test
    assert len(all_ex) == 8 and ts.info["dropped_rows"] == 1  # the row with an empty prompt
    ex = next(e for e in all_ex if e.id == "row:p2")
    assert (ex.prompt, ex.target, ex.task) == ("def square(x):\n", "    return x * x\n", "codegen")


def test_local_parquet_split_files_and_caps(store, fixtures_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in (fixtures_dir / "local_pairs.jsonl").read_text().splitlines()][:8]
    paths = {}
    for split, part in (("train", rows[:4]), ("valid", rows[4:6]), ("test", rows[6:])):
        paths[split] = str(tmp_path / f"{split}.parquet")
        pq.write_table(pa.Table.from_pylist(part), paths[split])
    cfg = {"source": "local", "paths": paths, "fields": FIELDS}
    ts = load_task_splits("codegen", cfg, store=store, seed=0, limits={"max_train_examples": 3, "max_eval_examples": 1})
    assert ts.counts() == {"train": 3, "valid": 1, "test": 1}
    assert {e.id for e in ts.train} <= {"row:p0", "row:p1", "row:p2", "row:p3"}
    assert ts.info["available"] == {"train": 4, "valid": 2, "test": 2}


def test_local_file_in_hub_schema(store, fixtures_dir):
    cfg = {"source": "local", "path": str(fixtures_dir / "kodcode_v1_sft_r1.jsonl"), "format": "kodcode"}
    ts = load_task_splits("codegen", cfg, store=store, seed=0, limits=LIMITS)
    assert sum(ts.counts().values()) == 11


def test_mixed_sources_in_one_task_config(store, fixtures_dir):
    cfg = {
        "tasks": {
            "codegen": {"source": "local", "path": str(fixtures_dir / "local_pairs.jsonl"), "fields": FIELDS},
            "codesum": {"source": "stdlib"},
        },
        "max_train_examples": 5,
        "max_eval_examples": 2,
    }
    tasks = load_tasks(cfg, store=store, seed=0)
    assert len(tasks["codesum"].train) == 5 and tasks["codegen"].info["source"] == "local"


def test_local_config_errors_name_the_field(store, fixtures_dir):
    with pytest.raises(ValueError, match="exactly one of path"):
        load_task_splits("codegen", {"source": "local", "fields": FIELDS}, store=store, seed=0, limits=LIMITS)
    with pytest.raises(ValueError, match=r"task.tasks.codegen.fields needs \['target'\]"):
        load_task_splits("codegen", {"source": "local", "path": str(fixtures_dir / "local_pairs.jsonl"),
                                     "fields": {"prompt": "instruction"}}, store=store, seed=0, limits=LIMITS)
    with pytest.raises(KeyError, match="fields.prompt='question' is not a column"):
        load_task_splits("codegen", {"source": "local", "path": str(fixtures_dir / "local_pairs.jsonl"),
                                     "fields": {"prompt": "question", "target": "response"}},
                         store=store, seed=0, limits=LIMITS)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_task_splits("codegen", {"source": "local", "path": "/nope.jsonl", "fields": FIELDS},
                         store=store, seed=0, limits=LIMITS)
