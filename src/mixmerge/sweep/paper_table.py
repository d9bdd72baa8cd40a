"""The study's final table from a merge sweep: base, specialists, mixture, each merge method at its best ratio.

Input: the rows of ``mixmerge.sweep.report.collect_metrics`` (one per job; ``<variant>/<task>/<metric>``
columns, ``method`` and ``weight`` of the merge). Columns: HumanEval and MBPP pass@1 (%), CodeXGLUE
smoothed BLEU-4, their average, and the mean relative degradation vs the specialists (each column against
the specialist of its task: codegen for HumanEval/MBPP, codesum for BLEU). A column whose metric has a 95 %
interval in the job's metrics.json (``<column>_lo``/``_hi`` in the row) reads ``value [lo, hi]``, the same
convention as the sweep report. ``sweep_verdict`` answers the study's question for the whole sweep: its best
merge against the mixture, "not separable" when the data do not tell them apart. Pure: rows in, text out.
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


def variant_intervals(row: Mapping[str, Any], variant: str) -> dict[str, tuple[float, float]]:
    """The 95 % intervals (0-100 scale) of ``variant``'s columns in one sweep row, where the row has them."""
    out = {}
    for label, (metric, _, scale) in COLUMNS.items():
        lo, hi = (_number(row.get(f"{variant}/{metric}{end}")) for end in ("_lo", "_hi"))
        if lo is not None and hi is not None:
            out[label] = (lo * scale, hi * scale)
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


def _first(rows: Sequence[Mapping[str, Any]], variant: str) -> Mapping[str, Any]:
    """The first row with any of a reference variant's scores (they are cached, so equal in every job)."""
    return next((r for r in rows if variant_scores(r, variant)), {})


def paper_rows(rows: Sequence[Mapping[str, Any]], *, merged_variant: str = "merged",
               tasks: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """``[{name, scores, intervals, average, degradation, weight}]`` in the paper's order; merges at their best
    average. ``intervals``: label -> (lo, hi) for the columns that have one.

    ``tasks``: the specialists to list (default: every task that owns a column).
    """
    if tasks is None:
        tasks = list(dict.fromkeys(task for _, task, _ in COLUMNS.values()))
    specialists = {t: variant_scores(_first(rows, f"specialist/{t}"), f"specialist/{t}") for t in tasks}
    table = []

    def add(name, row, variant, weight=None):
        scores = variant_scores(row, variant)
        if scores:
            table.append({"name": name, "scores": scores, "intervals": variant_intervals(row, variant),
                          "average": average(scores), "degradation": degradation(scores, specialists),
                          "weight": weight})

    add("Base", _first(rows, "base"), "base")
    for t in tasks:
        add(f"Specialist ({t})", _first(rows, f"specialist/{t}"), f"specialist/{t}")
    add("Data mixture", _first(rows, "mixture"), "mixture")
    best: dict[str, tuple[float, Mapping[str, Any]]] = {}
    for r in rows:
        method = r.get("method")
        avg = average(variant_scores(r, merged_variant))
        if method is None or avg is None:
            continue
        if method not in best or avg > best[method][0]:
            best[method] = (avg, r)
    for method in sorted(best, key=lambda m: list(METHOD_NAMES).index(m) if m in METHOD_NAMES else 99):
        row = best[method][1]
        add(METHOD_NAMES.get(method, str(method)), row, merged_variant, row.get("weight"))
    return table


def paper_table(rows: Sequence[Mapping[str, Any]], *, merged_variant: str = "merged") -> str:
    """The final table as markdown (rows: base, specialists, mixture, each merge method at its best ratio)."""

    def fmt(v, interval=None, digits=1):
        if v is None:
            return "—"
        return f"{v:.{digits}f}" + ("" if interval is None else f" [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]")

    header = ["Model", *COLUMNS, "Average", "Degradation vs specialists (%)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    entries = paper_rows(rows, merged_variant=merged_variant)
    for entry in entries:
        name = entry["name"]
        if entry["weight"] is not None:
            name += f" (w={entry['weight']:g})"
        cells = [fmt(entry["scores"].get(c), entry["intervals"].get(c)) for c in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {fmt(entry['average'])} | {fmt(entry['degradation'])} |")
    if any(entry["intervals"] for entry in entries):
        lines.append("\n[lo, hi]: 95 % bootstrap interval from each job's metrics.json. Average and degradation "
                     "carry none here: they need the per-example data (each run's metrics.json has the paired "
                     "comparisons).")
    return "\n".join(lines)


def _fmt_p(p: Any) -> str:
    return f", p = {p:.3g}" if _number(p) is not None else ""


def _separation(best: Mapping[str, Any], mix_row: Mapping[str, Any], metric: str, merged_variant: str,
                mixture: str) -> tuple[str | None, str] | None:
    """(winner or None for "not separable", how it was decided) from the best job's paired verdict, else
    from the two variants' own intervals; None when neither is in the rows (old metrics.json)."""
    verdict_for = best.get("verdict/best_merge")
    lo, hi = _number(best.get("verdict/difference_lo")), _number(best.get("verdict/difference_hi"))
    d = _number(best.get("verdict/difference"))
    if metric == "aggregate" and verdict_for in (None, merged_variant) and None not in (lo, hi, d):
        winner = best.get("verdict/winner")
        if winner not in ("mix", "merge", "not separable"):  # no stated winner: the interval decides
            winner = "not separable" if lo <= 0 <= hi else "mix" if d > 0 else "merge"
        how = (f"mixture − merge = {d:.4f}, 95 % CI [{lo:.4f}, {hi:.4f}]{_fmt_p(best.get('verdict/p_value'))}, "
               f"paired on the same examples in job {best.get('job')}")
        return (None if winner == "not separable" else winner), how
    m_lo, m_hi = (_number(mix_row.get(f"{mixture}/{metric}{e}")) for e in ("_lo", "_hi"))
    b_lo, b_hi = (_number(best.get(f"{merged_variant}/{metric}{e}")) for e in ("_lo", "_hi"))
    if None in (m_lo, m_hi, b_lo, b_hi):
        return None
    overlap = m_lo <= b_hi and b_lo <= m_hi
    winner = None if overlap else "mix" if m_lo > b_hi else "merge"
    how = (f"unpaired: the 95 % intervals, mixture [{m_lo:.4f}, {m_hi:.4f}] and merge [{b_lo:.4f}, {b_hi:.4f}], "
           f"{'overlap' if overlap else 'are disjoint'}; no paired verdict in metrics.json")
    return winner, how


def sweep_verdict(rows: Sequence[Mapping[str, Any]], metric: str = "aggregate", *,
                  merged_variant: str = "merged", mixture: str = "mixture") -> str:
    """One line: the best merge over every job of the sweep against the mixture on ``metric`` (higher is
    better), i.e. the sweep-level answer that each job's own check, about its single merge, cannot give.

    Whether the two are told apart comes from the best job's paired ``verdict`` (on the aggregate), else
    from their intervals (overlapping: "not separable"); without either (metrics.json from before
    intervals) the winner is named on the point values with a warning that it is untested."""
    merges = [(v, r) for r in rows if (v := _number(r.get(f"{merged_variant}/{metric}"))) is not None]
    mix_row = next((r for r in rows if _number(r.get(f"{mixture}/{metric}")) is not None), None)
    if not merges or mix_row is None:
        return (f"Sweep verdict: none; {len(merges)} jobs have {merged_variant}/{metric} and "
                f"{'a' if mix_row is not None else 'no'} job has {mixture}/{metric}.")
    mix = float(mix_row[f"{mixture}/{metric}"])
    best_value, best = max(merges, key=lambda m: m[0])
    diff = mix - best_value
    name = METHOD_NAMES.get(best.get("method"), str(best.get("method")))
    weight = f" w={best['weight']:g}" if _number(best.get("weight")) is not None else ""
    head = f"Sweep verdict over {len(merges)} merge{'s' * (len(merges) != 1)}:"
    values = f"mixture {mix:.4f} vs best merge {name}{weight}, job {best.get('job')}, {best_value:.4f}"
    separation = _separation(best, mix_row, metric, merged_variant, mixture)
    if separation is None:
        winner = "mix" if diff > 0 else "merge" if diff < 0 else "tie"
        return (f"{head} winner = {winner} by {abs(diff):.4f} {metric} ({values}). No intervals in these "
                "metrics.json files (written before ci95 existed): this difference is untested against noise.")
    winner, how = separation
    selected = (f"; the best of {len(merges)} merges on the same evaluation, which favours the merge"
                if len(merges) > 1 else "")
    if winner is None:
        return f"{head} not separable on {metric}: {how} ({values}{selected})."
    return f"{head} winner = {winner} by {abs(diff):.4f} {metric}: {how} ({values}{selected})."
