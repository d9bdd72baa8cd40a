"""The analysis stage in one call: analyse, plot, tabulate, recommend, check, report, log.

Two strategies call it: ``strategy=compare`` after evaluation (``strategy/compare.py``, with the variants'
metrics, so the recommendation is checked against what won) and ``strategy=analyze`` (given folders, the
specialists, or short probe fine-tunes; no metrics, no check). The ``analysis`` config arrives as a plain
mapping (``job.py`` resolves the whole config once; see conf/analysis/default.yaml), so nothing here
depends on Hydra.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mixmerge.analysis.plots import plot_analysis, write_tables
from mixmerge.analysis.recommend import Recommendation, check_recommendation, correlation_profile, recommend
from mixmerge.analysis.report import write_analysis_report
from mixmerge.analysis.stream import AnalysisResult, analyze_models
from mixmerge.files import json_safe, write_json_atomic

log = logging.getLogger(__name__)

__all__ = ["AnalysisOutputs", "recommend_from_probe", "run_analysis"]


@dataclass
class AnalysisOutputs:
    result: AnalysisResult
    recommendation: Recommendation | None
    check: dict | None
    files: dict[str, Path] = field(default_factory=dict)
    plots: list[Path] = field(default_factory=list)




def _pairs(cfg: Mapping, models: Mapping[str, Path]) -> list[tuple[str, str]] | None:
    pairs = cfg.get("pairs")
    if pairs is None:
        return None
    kept = [tuple(p) for p in pairs if p[0] in models and p[1] in models]
    dropped = [tuple(p) for p in pairs if tuple(p) not in kept]
    if dropped:
        log.warning("analysis.pairs %s name models that were not produced; skipped", dropped)
    return kept


def recommend_from_probe(base: Path, probes: Mapping[str, Path], thresholds: Mapping,
                         pair: tuple[str, str] | None = None) -> tuple[Recommendation, AnalysisResult]:
    """The recommendation from short probe fine-tunes (``analysis.probe.steps`` steps per task).

    ``probes`` maps a task (or variant) name to the probe's HF folder; the pair defaults to the first
    two. The probe's task vectors are small and noisy, so treat an "uncertain" as "measure both".
    """
    names = list(probes)
    if len(names) < 2 and pair is None:
        raise ValueError("the probe needs at least two task fine-tunes to correlate (analysis.probe)")
    pair = tuple(pair) if pair is not None else (names[0], names[1])
    result = analyze_models(base, probes, pairs=[pair])
    return recommend(correlation_profile(result, pair), thresholds, source="probe"), result


def run_analysis(
    base: Path,
    models: Mapping[str, Path],
    cfg: Mapping,
    out_dir: str | Path,
    *,
    variant_metrics: Mapping[str, Mapping] | None = None,
    evidence: Mapping | None = None,
    run=None,
) -> AnalysisOutputs:
    """Analyse ``models`` against ``base`` and write everything under ``out_dir``.

    ``cfg`` is the analysis config; ``variant_metrics`` (metrics.json's variants) enables the check of
    the recommendation (against ``evidence``'s verdict and degradation when given, see
    ``check_recommendation``); ``run`` is an open W&B run to log to (None: no logging).
    """
    out = Path(out_dir)
    pairs = _pairs(cfg, models)
    result = analyze_models(base, models, pairs=pairs)
    plots = plot_analysis(result, out, formats=tuple(cfg.get("plots", {}).get("formats", ("png", "svg"))))
    files = write_tables(result, out)
    rec = recommend(correlation_profile(result), cfg["thresholds"]) if result.pairs else None
    check = None
    if rec is not None and variant_metrics:
        ck = dict(cfg.get("check", {}))
        check = check_recommendation(
            rec, variant_metrics, ck.get("aggregate_key", "aggregate"),
            mixture=ck.get("mixture", "mixture"), specialist_prefix=ck.get("specialist_prefix", "specialist/"),
            merged_prefix=ck.get("merged_prefix", "merged"), task_metrics=ck.get("task_metrics"), evidence=evidence,
        )
    files["recommendation"] = out / "recommendation.json"
    write_json_atomic(files["recommendation"],
                      json_safe({"recommendation": rec.to_dict() if rec else None, "check": check}))
    files["report"] = write_analysis_report(result, rec, check, out, plots=plots)
    if run is not None:
        from mixmerge.analysis.wandb_log import log_analysis

        log_analysis(run, result, plots, rec, check)
    if rec is not None:
        log.info("analysis: recommend %s (%s)", rec.choice, rec.reason)
    return AnalysisOutputs(result, rec, check, files, plots)
