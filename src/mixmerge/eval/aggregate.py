"""One number per model from its metrics, for tables and for sweepers to maximise.

``eval.aggregate.terms`` maps a metric to the scale that puts it on a 0-1 "higher is better" footing
(pass@1 is already 0-1, BLEU-4 is 0-100 so 0.01; a loss can enter with a negative scale). The default
``method: mean`` is the mean of these normalised task scores; ``weighted`` uses ``weights``; ``min`` is
the worst task. Terms whose metric was not computed (say, BLEU under ``eval=quick``) are skipped. Without
``terms``, every task's headline metric at its row's scale (``mixmerge.tasks``) is a term.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from mixmerge.tasks import default_aggregate_terms

METHODS = ("mean", "weighted", "min")


def normalised_scores(metrics: Mapping[str, float], terms: Mapping[str, float]) -> dict[str, float]:
    """``metric * scale`` for every configured term present in ``metrics`` (a null scale drops a term)."""
    return {name: float(metrics[name]) * float(scale) for name, scale in terms.items()
            if scale is not None and name in metrics}


def aggregate(metrics: Mapping[str, float], eval_cfg: Mapping) -> float:
    """The configured aggregate of ``metrics`` (see the module docstring)."""
    spec = dict((eval_cfg or {}).get("aggregate") or {})
    method = spec.get("method", "mean")
    terms = dict(spec.get("terms") or default_aggregate_terms())
    if method not in METHODS:
        raise ValueError(f"eval.aggregate.method={method!r} is not one of {METHODS}")
    scores = normalised_scores(metrics, terms)
    if not scores:
        raise ValueError(f"none of eval.aggregate.terms {sorted(terms)} was computed (have {sorted(metrics)}); "
                         "list metrics this eval config produces")
    if method == "min":
        return min(scores.values())
    if method == "mean":
        return sum(scores.values()) / len(scores)
    weights = dict(spec.get("weights") or {})
    missing = [name for name in scores if name not in weights]
    if missing:
        raise ValueError(f"eval.aggregate.weights has no weight for {missing}")
    total = sum(float(weights[name]) for name in scores)
    if total <= 0:
        raise ValueError("eval.aggregate.weights must sum to a positive number")
    return sum(scores[name] * float(weights[name]) for name in scores) / total


def aggregate_function(present: Mapping[str, object], eval_cfg: Mapping
                       ) -> tuple[list[str], Callable[[Mapping[str, np.ndarray]], np.ndarray]]:
    """The terms the aggregate of a variant with metrics ``present`` uses, and the same formula as
    ``aggregate`` applied element-wise to arrays of replicates (what its bootstrap interval needs)."""
    spec = dict((eval_cfg or {}).get("aggregate") or {})
    method = spec.get("method", "mean")
    terms = {name: float(scale) for name, scale in dict(spec.get("terms") or default_aggregate_terms()).items()
             if scale is not None and name in present}
    weights = {name: float(w) for name, w in dict(spec.get("weights") or {}).items() if name in terms}

    def combine(values: Mapping[str, np.ndarray]) -> np.ndarray:
        scores = [np.asarray(values[name], dtype=float) * scale for name, scale in terms.items()]
        if method == "min":
            return np.minimum.reduce(scores)
        if method == "weighted":
            return sum(s * weights[n] for s, n in zip(scores, terms, strict=True)) / sum(weights.values())
        return sum(scores) / len(scores)

    return list(terms), combine
