"""The task table: one row per task with its prompt rendering, evaluator and headline metric.

Everything that treats tasks differently reads its row here: prompt rendering (``data/example.py``), the
evaluation suite (``eval/suite.py`` runs each task's ``evaluator``), the default aggregate
(``eval/aggregate.py``), the mix-or-merge check (``analysis/recommend.py``) and the paper table
(``sweep/paper_table.py``). Where a task's data comes from is its YAML (``conf/task/*.yaml``:
``source: stdlib | hub | local | repair``), so adding a task with its own metric is one evaluator module in
``eval/`` + one row here + one YAML. A task without a row (any name in a task YAML) is still trained,
mixed, merged and scored by held-out loss: it gets ``TaskSpec(name)``.

This module imports nothing from mixmerge: evaluators are named ``"module:function"`` and imported by the
suite when it runs them, so the table sits below every layer that reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ReportColumn:
    """One column of the paper table: ``metric`` scaled by ``scale`` onto 0-100, judged against this task's
    specialist."""

    label: str
    metric: str
    scale: float


@dataclass(frozen=True)
class TaskSpec:
    """One row of the task table."""

    name: str
    instruction: str = ""  # chat style: the user turn is this, a blank line, then the prompt
    completion_suffix: str = ""  # completion style: appended to the prompt (where the answer starts)
    target_is_sentence: bool = False  # completion style: the target is " <sentence>\n" (learns to stop)
    # "module:function" with the signature of ``eval.suite.Evaluator``; None = held-out loss only.
    evaluator: str | None = None
    # "module:function(eval_cfg)" run for every task before any model work: a config the evaluator cannot
    # honour (sandbox limits that fail even a canonical solution) stops the run before loss or generation.
    preflight: str | None = None
    # config sections of ``eval`` the evaluator reads -> what they measure (the results table's caption)
    eval_sections: Mapping[str, str] = field(default_factory=dict)
    headline_metric: str | None = None  # the specialist's own metric, higher is better
    aggregate_scale: float | None = None  # headline * scale lies in 0-1 (the default aggregate term)
    report_columns: tuple[ReportColumn, ...] = ()


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            "codegen",
            instruction="Complete the following Python function.",
            evaluator="mixmerge.eval.suite:evaluate_code_benchmarks",
            preflight="mixmerge.eval.suite:check_code_benchmark_limits",
            eval_sections={"humaneval": "of the 164 HumanEval problems", "mbpp": "MBPP test problems",
                           "humaneval_plus": "HumanEval+ problems", "mbpp_plus": "MBPP+ problems"},
            headline_metric="codegen/humaneval_pass@1",
            aggregate_scale=1.0,
            report_columns=(ReportColumn("HumanEval", "codegen/humaneval_pass@1", 100.0),
                            ReportColumn("MBPP", "codegen/mbpp_pass@1", 100.0)),
        ),
        TaskSpec(
            "codesum",
            instruction="Summarize the following Python function in one sentence.",
            completion_suffix="\n# Summary:",
            target_is_sentence=True,
            evaluator="mixmerge.eval.suite:evaluate_summaries",
            eval_sections={"codesum": "held-out code-summarization examples"},
            headline_metric="codesum/bleu4",
            aggregate_scale=0.01,  # BLEU-4 is reported on 0-100
            report_columns=(ReportColumn("CodeXGLUE BLEU", "codesum/bleu4", 1.0),),
        ),
        TaskSpec(
            "repair",
            instruction="Fix the bug in the following Python function.",
            evaluator="mixmerge.eval.repair:evaluate_repairs",
            eval_sections={"repair": "held-out repair examples"},
            headline_metric="repair/exact_match",
            aggregate_scale=1.0,
        ),
    )
}


def task_spec(name: str) -> TaskSpec:
    """The row of task ``name``; a task without a row gets the defaults (held-out loss only)."""
    return TASKS.get(name) or TaskSpec(name)


def headline_metrics() -> dict[str, str]:
    """task -> its headline metric, for every task that has one."""
    return {name: spec.headline_metric for name, spec in TASKS.items() if spec.headline_metric}


def default_aggregate_terms() -> dict[str, float]:
    """headline metric -> scale onto 0-1: the aggregate's terms when ``eval.aggregate.terms`` is not set."""
    return {spec.headline_metric: spec.aggregate_scale for spec in TASKS.values()
            if spec.headline_metric and spec.aggregate_scale is not None}


def report_columns() -> list[tuple[str, ReportColumn]]:
    """(owning task, column) for every column of the paper table, in table order."""
    return [(name, col) for name, spec in TASKS.items() for col in spec.report_columns]
