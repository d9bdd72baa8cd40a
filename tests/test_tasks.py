"""The task table (mixmerge.tasks) is what every task-aware part reads: rendering, evaluation, the default
aggregate, the recommendation check and the paper table."""

from __future__ import annotations

import pytest

import mixmerge.tasks as tasks
from mixmerge.data.example import Example, render_prompt, render_target
from mixmerge.eval import aggregate
from mixmerge.eval.suite import evaluator_of

ROW = tasks.TaskSpec("docfix", instruction="Fix the docstring.", completion_suffix="\n# Docstring:",
                     target_is_sentence=True, evaluator="mixmerge.eval.repair:evaluate_repairs",
                     headline_metric="docfix/exact_match", aggregate_scale=1.0,
                     report_columns=(tasks.ReportColumn("DocFix", "docfix/exact_match", 100.0),))


@pytest.fixture
def with_docfix(monkeypatch):
    monkeypatch.setitem(tasks.TASKS, "docfix", ROW)


def test_the_rows_and_their_derived_tables():
    assert list(tasks.TASKS) == ["codegen", "codesum", "repair"]
    assert tasks.headline_metrics() == {"codegen": "codegen/humaneval_pass@1", "codesum": "codesum/bleu4",
                                        "repair": "repair/exact_match"}
    assert tasks.default_aggregate_terms() == {"codegen/humaneval_pass@1": 1.0, "codesum/bleu4": 0.01,
                                               "repair/exact_match": 1.0}
    for name, spec in tasks.TASKS.items():
        assert evaluator_of(name) is not None, name  # every evaluator string imports
        assert spec.headline_metric.startswith(name + "/")


def test_a_task_without_a_row_is_rendered_as_is_and_scored_by_loss_only():
    ex = Example("def f():\n", "    return 1\n", "mytask", "1")
    assert tasks.task_spec("mytask") == tasks.TaskSpec("mytask")
    assert render_prompt(ex) == "def f():\n" and render_target(ex) == "    return 1\n"
    assert evaluator_of("mytask") is None


def test_a_new_row_reaches_rendering_aggregate_check_and_paper_columns(with_docfix):
    from mixmerge.analysis.recommend import check_recommendation, recommend

    ex = Example("def f(): ...", "Return one.", "docfix", "1")
    assert render_prompt(ex) == "def f(): ...\n# Docstring:" and render_target(ex) == " Return one.\n"
    assert aggregate({"docfix/exact_match": 0.25, "codegen/humaneval_pass@1": 0.75}, {}) == 0.5
    rec = recommend({"r_by_layer": {0: 0.9}}, {"r_mix": 0.7, "r_merge": 0.4})
    check = check_recommendation(rec, {"mixture": {"aggregate": 0.3, "docfix/exact_match": 0.2},
                                       "merged": {"aggregate": 0.2, "docfix/exact_match": 0.1},
                                       "specialist/docfix": {"aggregate": 0.1, "docfix/exact_match": 0.4}})
    assert check["degradation"]["best_merge"]["per_task"]["docfix"]["degradation"] == pytest.approx(0.75)
    assert ("docfix", ROW.report_columns[0]) in tasks.report_columns()
