"""The analysis report in Markdown: the numbers that matter, the recommendation, and how it fared."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from mixmerge.analysis.recommend import Recommendation
from mixmerge.analysis.stream import ALL, AnalysisResult
from mixmerge.files import write_text_atomic

__all__ = ["render_analysis_report", "write_analysis_report"]


def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _pct(value) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return lines


def render_analysis_report(
    result: AnalysisResult,
    recommendation: Recommendation | None = None,
    check: Mapping | None = None,
    plots: list[Path] | None = None,
) -> str:
    """The report's Markdown text (pure; ``write_analysis_report`` writes it)."""
    lines = ["# Weight analysis", "", f"Base: `{result.base}`; {result.num_layers} decoder layers.", ""]
    lines += ["## Weight deltas from the base", ""]
    lines += _table(
        ["model", "‖Δθ‖₂ (all)", "‖Δθ‖/‖θ_base‖", "rms Δ per weight", "largest-Δ layer"],
        [[m, result.norm(m), result.norm(m, stat="rel_l2"), result.norm(m, stat="rms"), _peak_layer(result, m)]
         for m in result.models],
    )
    if result.pairs:
        lines += ["", "## Task-vector similarity", ""]
        lines += _table(
            ["pair", "Pearson r (all)", "mean r over layers", "cosine", "sign-conflict rate"],
            [[f"{a} ~ {b}", result.pair_stat((a, b)), _layer_mean(result, (a, b)),
              result.pair_stat((a, b), stat="cosine"), result.pair_stat((a, b), stat="sign_conflict_rate")]
             for a, b in result.pairs],
        )
    if recommendation is not None:
        lines += ["", "## Recommendation", "",
                  f"**{recommendation.choice}** (from {recommendation.source} fine-tunes, "
                  f"r = {_fmt(recommendation.r_mean, 3)}, statistic `{recommendation.statistic}`, "
                  f"thresholds r_mix = {recommendation.thresholds.get('r_mix')}, "
                  f"r_merge = {recommendation.thresholds.get('r_merge')}).", "", recommendation.reason]
    if check:
        lines += ["", "## Check against the measured variants", ""]
        key = check.get("aggregate_key", "aggregate")
        if check.get("winner") is not None:
            verdict = {"right": "the recommendation was right", "wrong": "the recommendation was wrong",
                       "undecided": "the recommendation is undecided (not separable)"}.get(
                check.get("recommendation_check"), "no verdict (recommendation uncertain or a tie)")
            ci = check.get("difference_ci95")
            shown = (f"; mixture − merge {check['difference']:+.4f}, 95% CI [{ci[0]:+.4f}, {ci[1]:+.4f}], "
                     f"p = {check['p_value']:.3g}") if ci else ""
            lines.append(
                f"Winner on `{key}`: **{check['winner']}** — mixture {_fmt(check['mixture_aggregate'])} vs best "
                f"merge `{check['best_merge']}` {_fmt(check['best_merge_aggregate'])} "
                f"(margin {_fmt(check['margin'])}{shown}); {verdict}."
            )
        for label, deg in check.get("degradation", {}).items():
            if not deg["per_task"]:
                continue  # nothing computed: the notes below say why
            def ci(d):
                return f" [{_pct(d['ci95'][0])}, {_pct(d['ci95'][1])}]" if d.get("ci95") else ""
            per = ", ".join(f"{t}: {_pct(d['degradation'])}{ci(d)} on `{d['metric']}`" for t, d in deg["per_task"].items())
            mean_ci = ci({"ci95": deg.get("mean_ci95")})
            lines.append(f"- Degradation of the {label.replace('_', ' ')} (`{deg['variant']}`) relative to the "
                         f"specialists: mean {_pct(deg['mean'])}{mean_ci} (retains {_pct(deg['retention'])}); {per}.")
        lines += [f"- Note: {n}" for n in check.get("notes", [])]
    if result.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result.notes]
    if plots:
        lines += ["", "## Figures", ""]
        lines += [f"![{p.stem}]({p.name})" for p in plots if p.suffix == ".png"]
    lines += ["", "All numbers: `analysis.json`, `delta_norms.csv`, `task_vector_similarity.csv`.", ""]
    return "\n".join(lines)


def _peak_layer(result: AnalysisResult, model: str):
    rows = [r for r in result.norm_rows if r["model"] == model and isinstance(r["layer"], int) and r["module"] == ALL]
    return max(rows, key=lambda r: r["l2"])["layer"] if rows else None


def _layer_mean(result: AnalysisResult, pair: tuple[str, str]) -> float:
    values = [result.pair_stat(pair, layer) for layer in result.block_layers()]
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def write_analysis_report(
    result: AnalysisResult,
    recommendation: Recommendation | None,
    check: Mapping | None,
    out_dir: str | Path,
    plots: list[Path] | None = None,
) -> Path:
    """Write ``analysis_report.md`` into ``out_dir`` (atomically) and return its path."""
    path = Path(out_dir) / "analysis_report.md"
    write_text_atomic(path, render_analysis_report(result, recommendation, check, plots))
    return path
