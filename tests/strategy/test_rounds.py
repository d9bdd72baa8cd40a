"""strategy=rounds: the plan's checks, the report's numbers, and real runs on the tiny model."""

from __future__ import annotations

import json
import math

import pytest

from mixmerge.strategy.rounds import (
    metric_columns,
    plan_rounds,
    retention,
    round_merge_config,
    rounds_table,
    run,
)

TIES = {"method": "ties", "density": 0.5, "lambda": 1.0, "weight": 0.5, "weights": None, "seed": 0, "dtype": None,
        "vocab_policy": "strict", "max_base_distance": 0.5, "shard_size_mb": 2000, "base": None, "models": None}


def test_round_merge_config_keeps_the_group_for_the_same_method_and_only_generic_keys_otherwise():
    same = round_merge_config(TIES, {"method": "ties", "density": 0.2})
    assert same["density"] == 0.2 and same["lambda"] == 1.0 and "base" not in same and "models" not in same
    other = round_merge_config(TIES, {"method": "linear", "weights": [0.3, 0.7]})
    assert other == {"seed": 0, "dtype": None, "vocab_policy": "strict", "max_base_distance": 0.5,
                     "shard_size_mb": 2000, "method": "linear", "weights": [0.3, 0.7]}
    assert round_merge_config(TIES, None) is None


def test_plan_counts_the_previous_model_as_a_task_vector_only_in_original_mode():
    rounds = [{"add": ["codegen"], "merge": None}, {"add": ["codesum", "repair"], "merge": {"method": "ties"}}]
    tasks = ["codegen", "codesum", "repair"]
    previous = plan_rounds({"base_mode": "previous", "rounds": rounds}, tasks, TIES)
    original = plan_rounds({"base_mode": "original", "rounds": rounds}, tasks, TIES)
    assert [r["n_models"] for r in previous] == [1, 2]
    assert [r["n_models"] for r in original] == [1, 3]
    assert previous[0]["merge"] is None and previous[1]["merge"]["method"] == "ties"


@pytest.mark.parametrize(("strategy", "message"), [
    ({"base_mode": "sideways", "rounds": [{"add": ["codegen"]}]}, "strategy.base_mode='sideways'"),
    ({"rounds": []}, "strategy.rounds is empty"),
    ({"rounds": [{"add": []}]}, r"strategy.rounds\[0\].add is empty"),
    ({"rounds": [{"add": ["poetry"]}]}, r"strategy.rounds\[0\].add names \['poetry'\]"),
    ({"rounds": [{"add": ["codegen"]}, {"add": ["codegen"], "merge": {"method": "ties"}}]}, "repeats"),
    ({"base_mode": "original", "rounds": [{"add": ["codegen"]}, {"add": ["codesum"]}]},
     r"strategy.rounds\[1\].merge is null but the round has 2 models"),
    ({"base_mode": "original", "rounds": [{"add": ["codegen"]}, {"add": ["codesum"],
                                                                 "merge": {"method": "ties", "weights": [1.0]}}]},
     r"strategy.rounds\[1\].merge: merge.weights has 1 values but there are 2 models"),
    ({"base_mode": "original", "rounds": [{"add": ["codegen"]}, {"add": ["codesum"], "merge": {"method": "fisher"}}]},
     r"strategy.rounds\[1\].merge: method fisher needs .*base_mode=previous"),
])
def test_plan_rejects_bad_rounds_naming_the_field(strategy, message):
    with pytest.raises(ValueError, match=message):
        plan_rounds(strategy, ["codegen", "codesum"], TIES)


ROWS = [
    {"round": 1, "added": ["codegen"], "merge": None, "metrics": {"codegen/loss": 2.0, "aggregate": -2.0}},
    {"round": 2, "added": ["codesum"], "merge": {"method": "ties"},
     "metrics": {"codegen/loss": 2.5, "codesum/loss": 3.0, "aggregate": -2.75}},
]


def test_a_fisher_round_on_the_previous_model_is_planned():
    plan = plan_rounds({"rounds": [{"add": ["codegen"]}, {"add": ["codesum"], "merge": {"method": "fisher"}}]},
                       ["codegen", "codesum"], TIES)
    assert plan[1]["merge"]["method"] == "fisher" and plan[1]["n_models"] == 1


def test_report_table_has_a_row_per_round_and_blanks_before_a_task_is_added():
    assert metric_columns(ROWS) == ["codegen/loss", "codesum/loss", "aggregate"]
    assert retention(ROWS) == {"codegen/loss": [2.0, 2.5], "codesum/loss": [None, 3.0], "aggregate": [-2.0, -2.75]}
    lines = rounds_table(ROWS).splitlines()
    assert lines[0] == "| round | added | merge | codegen/loss | codesum/loss | aggregate |"
    assert lines[2] == "| 1 | codegen | — | 2.0000 |  | -2.0000 |"
    assert lines[3] == "| 2 | codesum | ties | 2.5000 | 3.0000 | -2.7500 |"


def test_two_rounds_on_tiny_evaluate_every_task_seen_so_far_and_rerun_from_cache(compose_cfg, run_strategy):
    cfg = compose_cfg("strategy=rounds", "task=mixture", "strategy.rounds=[{add: [codegen], merge: null}, "
                      "{add: [codesum], merge: {method: ties, weights: [0.5]}}]")
    objective, run_dir = run_strategy(run, cfg)
    report = json.loads((run_dir / "rounds.json").read_text())
    r1, r2 = report["rounds"]
    assert r1["tasks_seen"] == ["codegen"] and r2["tasks_seen"] == ["codegen", "codesum"]
    assert set(r1["metrics"]) == {"codegen/loss", "aggregate"}
    assert set(r2["metrics"]) == {"codegen/loss", "codesum/loss", "aggregate"}
    # a random tiny model's loss is near ln(vocab size 49152) = 10.8 nats
    assert all(9.0 < r["metrics"][m] < 12.5 for r in (r1, r2) for m in r["metrics"] if m.endswith("/loss"))
    assert math.isclose(objective, r2["metrics"]["aggregate"])
    assert math.isclose(r2["metrics"]["aggregate"], -(r2["metrics"]["codegen/loss"] + r2["metrics"]["codesum/loss"]) / 2)
    assert r1["merge"] is None and r2["merge"]["method"] == "ties" and r1["key"] != r2["key"]
    assert (run_dir / "rounds_retention.png").stat().st_size > 1000
    assert "| 2 | codesum | ties |" in (run_dir / "rounds.md").read_text()
    # the rerun finds every specialist, merge and evaluation in the cache: the same keys and numbers
    _, again = run_strategy(run, cfg, name="again")
    assert json.loads((again / "rounds.json").read_text())["rounds"] == report["rounds"]


@pytest.mark.slow
def test_three_rounds_with_repair_on_the_original_base(compose_cfg, run_strategy):
    cfg = compose_cfg("strategy=rounds", "task=three", "strategy.base_mode=original",
                      "strategy.repair_eval.limit=4", "strategy.repair_eval.max_new_tokens=24")
    _, run_dir = run_strategy(run, cfg)
    rounds = json.loads((run_dir / "rounds.json").read_text())["rounds"]
    assert [r["tasks_seen"] for r in rounds] == [["codegen"], ["codegen", "codesum"], ["codegen", "codesum", "repair"]]
    assert {"repair/loss", "repair/exact_match"} <= set(rounds[2]["metrics"])
    assert rounds[2]["metrics"]["repair/exact_match"] == 0.0  # a random model repairs nothing
