"""Log an analysis to an open W&B run: figures as images, every number as tables, headline scalars."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from mixmerge.analysis.plots import NORM_COLUMNS, PAIR_COLUMNS
from mixmerge.analysis.recommend import Recommendation
from mixmerge.analysis.stream import AnalysisResult

__all__ = ["analysis_log_payload", "log_analysis"]


def _cell(column: str, v):
    """W&B tables need one type per column: layers mix ints and "embed"/"all", so they go as text."""
    if column in ("layer", "module", "model", "pair", "model_a", "model_b"):
        return str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def analysis_log_payload(result: AnalysisResult, recommendation: Recommendation | None = None,
                         check: Mapping | None = None) -> dict[str, float | str]:
    """The scalars worth a line in the run summary, under ``analysis/``."""
    out: dict[str, float | str] = {}
    for m in result.models:
        out[f"analysis/delta_l2/{m}"] = result.norm(m)
    for a, b in result.pairs:
        out[f"analysis/pearson/{a}~{b}"] = result.pair_stat((a, b))
        out[f"analysis/sign_conflict_rate/{a}~{b}"] = result.pair_stat((a, b), stat="sign_conflict_rate")
    if recommendation is not None:
        out["analysis/recommendation"] = recommendation.choice
        out["analysis/r_mean"] = recommendation.r_mean
    if check:
        if check.get("margin") is not None:
            out["analysis/winner"] = check["winner"]
            out["analysis/margin"] = check["margin"]
        deg = check.get("degradation", {}).get("best_merge")
        if deg:
            out["analysis/best_merge_degradation"] = deg["mean"]
    return {k: v for k, v in out.items() if not (isinstance(v, float) and not math.isfinite(v))}


def log_analysis(run, result: AnalysisResult, plots: Sequence[Path] = (), recommendation: Recommendation | None = None,
                 check: Mapping | None = None) -> None:
    """Log to ``run`` (a ``wandb`` run; a disabled run accepts and drops everything)."""
    import wandb

    payload: dict = {
        "analysis/delta_norms": wandb.Table(columns=list(NORM_COLUMNS),
                                            data=[[_cell(c, r[c]) for c in NORM_COLUMNS] for r in result.norm_rows]),
    }
    if result.pair_rows:
        payload["analysis/task_vector_similarity"] = wandb.Table(
            columns=list(PAIR_COLUMNS), data=[[_cell(c, r[c]) for c in PAIR_COLUMNS] for r in result.pair_rows])
    for p in plots:
        if Path(p).suffix == ".png":
            payload[f"analysis/plots/{Path(p).stem}"] = wandb.Image(str(p))
    run.log(payload)
    for key, value in analysis_log_payload(result, recommendation, check).items():
        run.summary[key] = value
