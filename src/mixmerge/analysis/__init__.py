"""analysis stage: how fine-tuning moved the weights, and whether to mix or merge.

``analyze_models`` streams task vectors out of HF folders; ``plot_analysis``/``write_tables`` write the
figures and numbers; ``recommend``/``check_recommendation`` decide mix vs merge and check the decision
against measured variants; ``write_analysis_report`` writes the Markdown summary.
"""

from mixmerge.analysis.layers import TensorLocation, locate
from mixmerge.analysis.plots import plot_analysis, write_tables
from mixmerge.analysis.recommend import (
    Recommendation,
    check_recommendation,
    correlation_profile,
    recommend,
)
from mixmerge.analysis.report import write_analysis_report
from mixmerge.analysis.stream import AnalysisResult, analyze_models
from mixmerge.merge.deltas import (
    NormAccumulator,
    PairAccumulator,
    cosine,
    delta_l2,
    pearson,
    sign_conflict_rate,
)

__all__ = [
    "AnalysisResult",
    "NormAccumulator",
    "PairAccumulator",
    "Recommendation",
    "TensorLocation",
    "analyze_models",
    "check_recommendation",
    "correlation_profile",
    "cosine",
    "delta_l2",
    "locate",
    "pearson",
    "plot_analysis",
    "recommend",
    "sign_conflict_rate",
    "write_analysis_report",
    "write_tables",
]
