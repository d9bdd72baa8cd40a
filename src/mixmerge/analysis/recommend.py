"""Mix or merge? A recommendation from the task-vector correlation profile, and its check against results.

Zhu et al. (2026), "Multi-task Code LLMs: Data Mix or Model Merge?" (arXiv:2601.21115), found the
codegen and codesum task vectors of ~1.5B models strongly correlated (r > 0.7) where data mixing won,
and much less correlated at 7B where merging won. ``recommend`` turns that observation into a rule with
configurable thresholds; ``check_recommendation`` says, once the mixture and the merges have been
measured, whether the rule picked the strategy that actually won. The same rule works on the deltas of
a short probe fine-tune, so a recommendation is available before the full training is paid for.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from mixmerge.analysis.stream import ALL, AnalysisResult, pair_name
from mixmerge.tasks import headline_metrics

__all__ = [
    "Recommendation",
    "check_recommendation",
    "correlation_profile",
    "recommend",
    "relative_degradation",
]

CHOICES = ("mix", "merge", "uncertain")
STATISTICS = ("layer_mean", "overall")


@dataclass(frozen=True)
class Recommendation:
    """``choice`` is "mix", "merge" or "uncertain"; ``r_mean`` the correlation it was decided on."""

    choice: str
    r_mean: float
    reason: str
    statistic: str = "layer_mean"
    thresholds: dict = field(default_factory=dict)
    source: str = "full"  # "full" fine-tunes or a short "probe"

    def to_dict(self) -> dict:
        return asdict(self)


def correlation_profile(result: AnalysisResult, pair: tuple[str, str] | None = None) -> dict:
    """The Pearson r of one pair per block layer and overall, in the form ``recommend`` reads.

    ``pair`` defaults to the first pair of the analysis (the two specialists in the default run).
    """
    if not result.pairs:
        raise ValueError("the analysis has no pairs; set analysis.pairs to two models (e.g. the specialists)")
    pair = tuple(pair) if pair is not None else tuple(result.pairs[0])
    name = pair_name(*pair)
    rows = [r for r in result.pair_rows if r["pair"] == name and r["module"] == ALL]
    if not rows:
        raise ValueError(f"pair {pair} is not in the analysis; analysed pairs: {result.pairs}")
    by_layer = {r["layer"]: r["pearson"] for r in rows if isinstance(r["layer"], int)}
    overall = next(r["pearson"] for r in rows if r["layer"] == ALL)
    return {"pair": name, "r_by_layer": dict(sorted(by_layer.items())), "r_overall": overall}


def _validate_thresholds(thresholds: Mapping) -> tuple[float, float, str]:
    try:
        r_mix, r_merge = float(thresholds["r_mix"]), float(thresholds["r_merge"])
    except KeyError as err:
        raise ValueError(f"analysis.thresholds needs {err.args[0]!r} (e.g. r_mix: 0.7, r_merge: 0.4)") from None
    statistic = thresholds.get("statistic", "layer_mean")
    if statistic not in STATISTICS:
        raise ValueError(f"analysis.thresholds.statistic={statistic!r} is not one of {STATISTICS}")
    if not (-1.0 <= r_merge <= r_mix <= 1.0):
        raise ValueError(
            f"analysis.thresholds: need -1 <= r_merge <= r_mix <= 1, got r_merge={r_merge}, r_mix={r_mix}"
        )
    return r_mix, r_merge, statistic


def _profile_r(profile: Mapping, statistic: str) -> float:
    if statistic == "overall":
        if "r_overall" not in profile:
            raise ValueError("analysis.thresholds.statistic=overall needs a profile with 'r_overall'")
        return float(profile["r_overall"])
    layers = profile.get("r_by_layer")
    if layers is None:
        raise ValueError("analysis.thresholds.statistic=layer_mean needs a profile with 'r_by_layer'")
    values = list(layers.values()) if isinstance(layers, Mapping) else list(layers)
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(finite) / len(finite) if finite else math.nan


def recommend(profile: Mapping, thresholds: Mapping, *, source: str = "full") -> Recommendation:
    """Recommend "mix" when r ≥ ``r_mix``, "merge" when r ≤ ``r_merge``, otherwise "uncertain".

    r is the mean over block layers of the per-layer Pearson r of the two task vectors
    (``statistic: layer_mean``, the paper's Figure 3 averaged) or the r of the whole flattened task
    vectors (``statistic: overall``). An undefined r (e.g. a task vector that is all zeros) is
    "uncertain".
    """
    r_mix, r_merge, statistic = _validate_thresholds(thresholds)
    r = _profile_r(profile, statistic)
    where = f"{'probe' if source == 'probe' else 'task'} vectors{' of ' + profile['pair'] if 'pair' in profile else ''}"
    if not math.isfinite(r):
        choice, reason = "uncertain", f"the Pearson r of the {where} is undefined (a delta is constant or zero)"
    elif r >= r_mix:
        choice = "mix"
        reason = (f"r = {r:.3f} ≥ r_mix = {r_mix}: the {where} move the weights alike, as for the ~1.5B models "
                  "in Zhu et al. 2026 where data mixing won")
    elif r <= r_merge:
        choice = "merge"
        reason = (f"r = {r:.3f} ≤ r_merge = {r_merge}: the {where} are weakly correlated, as for the 7B models "
                  "in Zhu et al. 2026 where model merging won")
    else:
        choice = "uncertain"
        reason = f"r = {r:.3f} lies between r_merge = {r_merge} and r_mix = {r_mix}: measure both"
    return Recommendation(choice, r, reason, statistic, {"r_mix": r_mix, "r_merge": r_merge}, source)


def relative_degradation(specialist: float, merged: float) -> float:
    """(specialist − merged) / specialist: 0.04 means the merge kept 96% of the specialist's score."""
    return (specialist - merged) / specialist if specialist != 0 else math.nan


def _metrics(entry: Mapping) -> Mapping[str, float]:
    """Accept both ``{metric: value}`` and the pipeline's ``{"metrics": {...}, "artifact": ...}``."""
    inner = entry.get("metrics") if isinstance(entry, Mapping) else None
    return inner if isinstance(inner, Mapping) else entry


def _degradation(variant: str, metrics: Mapping, specialists: Mapping[str, str], task_metrics: Mapping) -> dict:
    """Per-task degradation of ``variant``; a task whose metric one side lacks goes to ``not_computed``."""
    per_task, not_computed = {}, []
    for task, spec_variant in specialists.items():
        key = task_metrics[task]
        spec, cand = metrics[spec_variant].get(key), metrics[variant].get(key)
        if spec is None or cand is None:
            lacking = [v for v, value in ((spec_variant, spec), (variant, cand)) if value is None]
            not_computed.append({"task": task, "metric": key, "missing_for": lacking})
            continue
        per_task[task] = {"metric": key, "specialist": spec, "variant": cand,
                          "degradation": relative_degradation(spec, cand)}
    finite = [t["degradation"] for t in per_task.values() if math.isfinite(t["degradation"])]
    mean = sum(finite) / len(finite) if finite else math.nan
    return {"variant": variant, "per_task": per_task, "not_computed": not_computed, "mean": mean,
            "retention": 1 - mean}


def _not_computed_notes(label: str, degradation: Mapping) -> list[str]:
    """What the degradation of ``label`` could not be computed on, and the two ways to get it."""
    return [f"no {label} degradation on {m['task']}: {m['metric']!r} was not evaluated for "
            f"{' and '.join(m['missing_for'])} (an eval config that computes it, e.g. eval=default, or "
            f"analysis.check.task_metrics.{m['task']}=<a metric both have>)" for m in degradation["not_computed"]]


def check_recommendation(
    recommendation: Recommendation,
    variant_metrics: Mapping[str, Mapping[str, float]],
    aggregate_key: str = "aggregate",
    *,
    mixture: str = "mixture",
    specialist_prefix: str = "specialist/",
    merged_prefix: str = "merged",
    task_metrics: Mapping[str, str] | None = None,
    merges: Sequence[str] | None = None,
    evidence: Mapping | None = None,
) -> dict:
    """Which strategy actually won, by how much, and how much the best merge lost to the specialists.

    Variants are named as in the pipeline's metrics.json: ``mixture``, ``specialist/<task>`` and
    ``merged`` or ``merged/<anything>`` (or pass ``merges`` explicitly). The best merge is the merged
    variant with the highest ``aggregate_key``. ``winner`` is "mix" if the mixture's aggregate beats the
    best merge's, "merge" if it is lower, "tie" if equal; ``margin`` = |difference| of the aggregates.

    Degradation (the paper's headline figure): for each task t with a specialist,
    d_t = (s_t − m_t) / s_t, where s_t is the specialist's score on its own task metric
    (``task_metrics[t]``, by default its row's headline metric in ``mixmerge.tasks``) and m_t the best merge's score on the same metric; the reported ``mean`` is the
    mean of d_t over tasks (0.04 = the merge retains 96%). Negative d_t means the merge beat the
    specialist. The same figure is given for the mixture. A task whose metric was not evaluated (e.g.
    pass@1 under ``eval=quick``) is left out of the figure and named in ``notes``, so the verdict still stands.

    ``evidence`` (``{"verdict", "degradation"}`` from ``eval/evidence.py``, as ``strategy=compare`` computes
    them from per-example data) replaces the point comparison: the winner is then "mix", "merge" or
    "not separable" by the paired interval, ``recommendation_check`` reads "right", "wrong" or "undecided",
    and the degradation carries intervals and is undefined where the specialist never beat the base.
    """
    metrics = {v: _metrics(m) for v, m in variant_metrics.items()}
    task_metrics = {**headline_metrics(), **dict(task_metrics or {})}
    merge_names = list(merges) if merges is not None else [
        v for v in metrics if v == merged_prefix or v.startswith(merged_prefix.rstrip("/") + "/")
    ]
    specialists = {v[len(specialist_prefix):]: v for v in metrics if v.startswith(specialist_prefix)}
    missing_tasks = [t for t in specialists if t not in task_metrics]
    if missing_tasks:
        raise ValueError(f"no task metric for {missing_tasks}; set analysis.check.task_metrics.<task>")
    out: dict = {"recommendation": recommendation.choice, "r_mean": recommendation.r_mean,
                 "aggregate_key": aggregate_key, "notes": []}

    def agg(v: str) -> float | None:
        value = metrics[v].get(aggregate_key)
        return None if value is None or not math.isfinite(float(value)) else float(value)

    scored = {v: agg(v) for v in merge_names if agg(v) is not None}
    best = max(scored, key=scored.get) if scored else None
    mix_score = agg(mixture) if mixture in metrics else None
    out.update({"mixture_aggregate": mix_score, "best_merge": best,
                "best_merge_aggregate": scored.get(best) if best else None,
                "merge_aggregates": scored, "winner": None, "margin": None, "recommendation_correct": None})
    if mix_score is None or best is None:
        out["notes"].append(f"cannot compare: mixture {mixture!r} or merged variants lack {aggregate_key!r}")
    else:
        diff = mix_score - scored[best]
        out["winner"] = "mix" if diff > 0 else "merge" if diff < 0 else "tie"
        out["margin"] = abs(diff)
        out["relative_margin"] = abs(diff) / max(mix_score, scored[best]) if max(mix_score, scored[best]) else None
        if recommendation.choice in ("mix", "merge") and out["winner"] != "tie":
            out["recommendation_correct"] = recommendation.choice == out["winner"]
    verdict = (evidence or {}).get("verdict") or {}
    if verdict.get("winner") is not None:
        out.update({"winner": verdict["winner"], "best_merge": verdict["best_merge"],
                    "margin": abs(verdict["difference"]), "difference": verdict["difference"],
                    "difference_ci95": verdict["ci95"], "p_value": verdict["p_value"],
                    "recommendation_correct": None})
        if recommendation.choice in ("mix", "merge") and verdict["winner"] in ("mix", "merge"):
            out["recommendation_correct"] = recommendation.choice == verdict["winner"]
    out["recommendation_check"] = {True: "right", False: "wrong"}.get(out["recommendation_correct"])
    if out["winner"] == "not separable" and recommendation.choice in ("mix", "merge"):
        out["recommendation_check"] = "undecided"
    if (evidence or {}).get("degradation") is not None:
        out["degradation"] = dict(evidence["degradation"])
        for label, deg in out["degradation"].items():
            out["notes"] += _not_computed_notes(label.replace("_", " "), deg)
            out["notes"] += [f"{label.replace('_', ' ')} degradation on {u['task']} undefined: {u['reason']}"
                             for u in deg.get("undefined", [])]
        return out
    out["degradation"] = {}
    if specialists:
        if best is not None:
            out["degradation"]["best_merge"] = _degradation(best, metrics, specialists, task_metrics)
        if mixture in metrics:
            out["degradation"]["mixture"] = _degradation(mixture, metrics, specialists, task_metrics)
        for label, deg in out["degradation"].items():
            out["notes"] += _not_computed_notes(label.replace("_", " "), deg)
    else:
        out["notes"].append(f"no specialists (variants named {specialist_prefix}<task>): no degradation figure")
    return out
