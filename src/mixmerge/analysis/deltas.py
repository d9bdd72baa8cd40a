"""The delta statistics live in ``mixmerge.merge.deltas``: the correlation-aware merge uses them too, and the
merge package sits below analysis in the import layers. This module keeps the analysis' import path."""

from mixmerge.merge.deltas import (
    NormAccumulator,
    PairAccumulator,
    cosine,
    delta_l2,
    l2,
    pearson,
    sign_conflict_rate,
)

__all__ = [
    "NormAccumulator",
    "PairAccumulator",
    "cosine",
    "delta_l2",
    "l2",
    "pearson",
    "sign_conflict_rate",
]
