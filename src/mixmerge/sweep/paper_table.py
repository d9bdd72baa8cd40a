"""The study's final table from a merge sweep: base, specialists, mixture, each merge method at its best ratio.

Input: the rows of ``mixmerge.sweep.report.collect_metrics`` (one per job; ``<variant>/<task>/<metric>``
columns, ``method`` and ``weight`` of the merge). Columns: HumanEval and MBPP pass@1 (%), CodeXGLUE
smoothed BLEU-4, their average, and the mean relative degradation vs the specialists (each column against
the specialist of its task: codegen for HumanEval/MBPP, codesum for BLEU). ``sweep_verdict`` answers the
study's question for the whole sweep: its best merge against the mixture. Pure: rows in, text out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from mixmerge.tasks import report_columns

# column label -> (metric key, owning specialist task, scale onto 0-100), from the task table's rows
COLUMNS: dict[str, tuple[str, str, float]] = {col.label: (col.metric, task, col.scale) for task, col in report_columns()}
METHOD_NAMES = {"linear": "Linear", "ties": "TIES", "dare": "DARE", "della": "DELLA", "task_arithmetic": "Task Arithmetic",
                "slerp": "SLERP", "breadcrumbs": "Breadcrumbs", "model_stock": "Model Stock", "fisher": "Fisher"}


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(float(v)):
        return None
    return float(v)


def variant_scores(row: Mapping[str, Any], variant: str) -> dict[str, float]:
    """The table's columns (0-100 scale) of ``variant`` in one sweep row; missing metrics are left out."""
    out = {}
    for label, (metric, _, scale) in COLUMNS.items():
        v = _number(row.get(f"{variant}/{metric}"))
        if v is not None:
            out[label] = v * scale
    return out


def average(scores: Mapping[str, float]) -> float | None:
    values = [scores[c] for c in COLUMNS if c in scores]
    return sum(values) / len(values) if values else None


def degradation(scores: Mapping[str, float], specialists: Mapping[str, Mapping[str, float]]) -> float | None:
    """Mean over columns of (specialist − model) / specialist, in percent (positive = worse than the specialist)."""
    drops = []
    for label, (_, task, _) in COLUMNS.items():
        ref = specialists.get(task, {}).get(label)
        if label in scores and ref:
            drops.append(100.0 * (ref - scores[label]) / ref)
    return sum(drops) / len(drops) if drops else None


def _first(rows: Sequence[Mapping[str, Any]], variant: str) -> dict[str, float]:
    """A reference variant's scores from the first row that has any (they are cached, so equal in every job)."""
    for r in rows:
        scores = variant_scores(r, variant)
        if scores:
            return scores
    return {}


def paper_rows(rows: Sequence[Mapping[str, Any]], *, merged_variant: str = "merged",
               tasks: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """``[{name, scores, average, degradation, weight}]`` in the paper's order; merges at their best average.

    ``tasks``: the specialists to list (default: every task that owns a column).
    """
    if tasks is None:
        tasks = list(dict.fromkeys(task for _, task, _ in COLUMNS.values()))
    specialists = {t: _first(rows, f"specialist/{t}") for t in tasks}
    table = []

    def add(name, scores, weight=None):
        if scores:
            table.append({"name": name, "scores": scores, "average": average(scores),
                          "degradation": degradation(scores, specialists), "weight": weight})

    add("Base", _first(rows, "base"))
    for t in tasks:
        add(f"Specialist ({t})", specialists[t])
    add("Data mixture", _first(rows, "mixture"))
    best: dict[str, tuple[float, dict, Any]] = {}
    for r in rows:
        method = r.get("method")
        scores = variant_scores(r, merged_variant)
        avg = average(scores)
        if method is None or avg is None:
            continue
        if method not in best or avg > best[method][0]:
            best[method] = (avg, scores, r.get("weight"))
    for method in sorted(best, key=lambda m: list(METHOD_NAMES).index(m) if m in METHOD_NAMES else 99):
        _, scores, weight = best[method]
        add(METHOD_NAMES.get(method, str(method)), scores, weight)
    return table


def paper_table(rows: Sequence[Mapping[str, Any]], *, merged_variant: str = "merged") -> str:
    """The final table as markdown (rows: base, specialists, mixture, each merge method at its best ratio)."""

    def fmt(v, digits=1):
        return "—" if v is None else f"{v:.{digits}f}"

    header = ["Model", *COLUMNS, "Average", "Degradation vs specialists (%)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in paper_rows(rows, merged_variant=merged_variant):
        name = entry["name"]
        if entry["weight"] is not None:
            name += f" (w={entry['weight']:g})"
        cells = [fmt(entry["scores"].get(c)) for c in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {fmt(entry['average'])} | {fmt(entry['degradation'])} |")
    return "\n".join(lines)


def sweep_verdict(rows: Sequence[Mapping[str, Any]], metric: str = "aggregate", *,
                  merged_variant: str = "merged", mixture: str = "mixture") -> str:
    """One line: the best merge over every job of the sweep against the mixture on ``metric`` (higher is
    better), i.e. the sweep-level answer that each job's own check, about its single merge, cannot give."""
    merges = [(v, r) for r in rows if (v := _number(r.get(f"{merged_variant}/{metric}"))) is not None]
    mix = next((v for r in rows if (v := _number(r.get(f"{mixture}/{metric}"))) is not None), None)
    if not merges or mix is None:
        return (f"Sweep verdict: none; {len(merges)} jobs have {merged_variant}/{metric} and "
                f"{'a' if mix is not None else 'no'} job has {mixture}/{metric}.")
    best_value, best = max(merges, key=lambda m: m[0])
    diff = mix - best_value
    winner = "mix" if diff > 0 else "merge" if diff < 0 else "tie"
    name = METHOD_NAMES.get(best.get("method"), str(best.get("method")))
    weight = f" w={best['weight']:g}" if _number(best.get("weight")) is not None else ""
    return (f"Sweep verdict over {len(merges)} merge{'s' * (len(merges) != 1)}: winner = {winner} by {abs(diff):.4f} {metric} "
            f"(mixture {mix:.4f} vs best merge {name}{weight}, job {best.get('job')}, {best_value:.4f}).")
