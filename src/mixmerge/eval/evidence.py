"""What a run's numbers support: intervals per metric, paired comparisons, the verdict, degradation.

Pure: metric dicts and per-example ``Sample``s in (``eval/uncertainty.py``), plain dicts out, ready for
``metrics.json``. Every variant is evaluated on the same examples, so every comparison is paired: the
bootstrap resamples the same examples for both models, and the p-value is an exact McNemar test on 0/1
outcomes (pass@1, exact match, lm-eval accuracy) or a paired randomisation test otherwise.

The verdict between mixing and merging is "not separable" whenever the 95% interval of
(mixture − best merge) on the aggregate contains 0: a winner is named only when the data support it.
A specialist's degradation under merging, (s − m) / s, is defined only on a task where the specialist is
significantly better than the base: otherwise the "skill" a merge could lose was never shown to exist, and
a ratio of two noisy near-zero numbers (one problem out of 16 = "100 %") says nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from mixmerge.eval.aggregate import aggregate_function
from mixmerge.eval.forgetting import higher_is_better as lm_eval_higher_is_better
from mixmerge.eval.uncertainty import (
    N_RESAMPLES,
    Sample,
    aggregate_ci,
    bootstrap_ci,
    compare,
    compare_aggregate,
    joint_indices,
    percentile_interval,
    replicates,
)

AGGREGATE = "aggregate"


@dataclass(frozen=True)
class Measured:
    """One variant's evaluation: its metrics and, per metric, the per-example observations behind it."""

    metrics: Mapping[str, float]
    samples: Mapping[str, Sample] = field(default_factory=dict)


def higher_is_better(metric: str) -> bool:
    """Direction of a metric name: losses and perplexity-like lm-eval metrics are lower-is-better."""
    if metric.endswith("/loss"):
        return False
    return lm_eval_higher_is_better(metric) if metric.startswith("lm_eval/") else True


def _aggregate_samples(measured: Measured, eval_cfg: Mapping) -> tuple[dict[str, Sample], object] | None:
    """The aggregate's term samples and its formula, or None when a term lacks per-example data."""
    terms, combine = aggregate_function(measured.metrics, eval_cfg)
    if not terms or any(t not in measured.samples for t in terms):
        return None
    return {t: measured.samples[t] for t in terms}, combine


def intervals(measured: Measured, eval_cfg: Mapping, *, seed: int = 0, n_resamples: int = N_RESAMPLES
              ) -> tuple[dict[str, list[float] | None], dict[str, int | None]]:
    """``(ci95, n)`` with exactly the keys of ``measured.metrics``: a seeded percentile-bootstrap interval
    over the evaluated examples, and how many there were. The aggregate resamples every term's examples
    in the same replicate. A metric without per-example data (lm-eval's ``*_stderr``) gets None."""
    ci95: dict[str, list[float] | None] = {}
    n: dict[str, int | None] = {}
    for name in measured.metrics:
        if name in measured.samples:
            sample = measured.samples[name]
            ci95[name] = list(bootstrap_ci(sample, seed=seed, n_resamples=n_resamples))
            n[name] = sample.n
        elif name == AGGREGATE and (agg := _aggregate_samples(measured, eval_cfg)) is not None:
            samples, combine = agg
            ci95[name] = list(aggregate_ci(samples, combine, seed=seed, n_resamples=n_resamples))
            n[name] = sum(len(ids) for ids in {s.ids for s in samples.values()})
        else:
            ci95[name], n[name] = None, None
    return ci95, n


def compare_on(a_name: str, a: Measured, b_name: str, b: Measured, metric: str, eval_cfg: Mapping, *,
               seed: int = 0, n_resamples: int = N_RESAMPLES) -> dict | None:
    """The paired comparison ``a − b`` on ``metric`` (None when either side lacks its per-example data)."""
    if metric == AGGREGATE:
        sa, sb = _aggregate_samples(a, eval_cfg), _aggregate_samples(b, eval_cfg)
        if sa is None or sb is None or set(sa[0]) != set(sb[0]):
            return None
        result = compare_aggregate(sa[0], sb[0], sa[1], seed=seed, n_resamples=n_resamples)
    elif metric in a.samples and metric in b.samples:
        result = compare(a.samples[metric], b.samples[metric], seed=seed, n_resamples=n_resamples)
    else:
        return None
    up = higher_is_better(metric)
    better = None
    if result.separable:
        better = a_name if (result.difference > 0) == up else b_name
    return {"a": a_name, "b": b_name, "metric": metric, "difference": result.difference,
            "ci95": list(result.ci95), "p_value": result.p_value, "n": result.n, "test": result.test,
            "better": better}


def own_task_metrics(task: str, task_metrics: Mapping[str, str]) -> list[str]:
    """The metrics a task's specialist is judged on: its headline metric (if it has one) and its loss."""
    return [m for m in (task_metrics.get(task), f"{task}/loss") if m]


def comparison_plan(variants: Sequence[str], task_metrics: Mapping[str, str], eval_cfg: Mapping, *,
                    base: str = "base", mixture: str = "mixture", specialist_prefix: str = "specialist/",
                    merged_prefix: str = "merged") -> list[tuple[str, str, str]]:
    """The comparisons a verdict rests on, as (a, b, metric): the mixture against each merge (aggregate
    and each of its terms), each merge against each specialist on that specialist's own task, each
    specialist against the base on its own task, and every variant against the base on the general
    (lm-eval) tasks: the forgetting check."""
    merges = [v for v in variants if v == merged_prefix or v.startswith(merged_prefix.rstrip("/") + "/")]
    specialists = {v[len(specialist_prefix):]: v for v in variants if v.startswith(specialist_prefix)}
    terms = list(dict((eval_cfg.get("aggregate") or {}).get("terms") or {}))
    plan: list[tuple[str, str, str]] = []
    if mixture in variants:
        plan += [(mixture, m, metric) for m in merges for metric in (AGGREGATE, *terms)]
    for task, spec in specialists.items():
        plan += [(m, spec, metric) for m in merges for metric in own_task_metrics(task, task_metrics)]
        if base in variants:
            plan += [(spec, base, metric) for metric in own_task_metrics(task, task_metrics)]
    return plan


def paired_comparisons(measured: Mapping[str, Measured], task_metrics: Mapping[str, str], eval_cfg: Mapping, *,
                       seed: int = 0, n_resamples: int = N_RESAMPLES, base: str = "base", **names) -> list[dict]:
    """Every comparison of ``comparison_plan`` both sides can support, plus the forgetting comparisons."""
    plan = comparison_plan(list(measured), task_metrics, eval_cfg, base=base, **names)
    if base in measured:
        general = sorted(m for m in measured[base].samples if m.startswith("lm_eval/"))
        plan += [(v, base, m) for v in measured if v != base for m in general]
    out = []
    for a, b, metric in dict.fromkeys(plan):
        row = compare_on(a, measured[a], b, measured[b], metric, eval_cfg, seed=seed, n_resamples=n_resamples)
        if row is not None:
            out.append(row)
    return out


def find(comparisons: Sequence[Mapping], a: str, b: str, metric: str) -> Mapping | None:
    return next((c for c in comparisons if (c["a"], c["b"], c["metric"]) == (a, b, metric)), None)


def verdict(measured: Mapping[str, Measured], comparisons: Sequence[Mapping], *, mixture: str = "mixture",
            merged_prefix: str = "merged") -> dict:
    """``{"winner": "mix" | "merge" | "not separable" | None, "best_merge", "difference", "ci95", "p_value"}``
    on the aggregate; None (with ``reason``) when the run lacks a mixture or a merge to compare."""
    merges = {v: m.metrics.get(AGGREGATE) for v, m in measured.items()
              if v == merged_prefix or v.startswith(merged_prefix.rstrip("/") + "/")}
    merges = {v: x for v, x in merges.items() if x is not None and math.isfinite(x)}
    empty = {"winner": None, "best_merge": None, "difference": None, "ci95": None, "p_value": None}
    if mixture not in measured or not merges:
        return {**empty, "reason": "this run has no mixture and merge with an aggregate to compare"}
    best = max(merges, key=merges.get)
    row = find(comparisons, mixture, best, AGGREGATE)
    if row is None:
        return {**empty, "best_merge": best,
                "reason": "the aggregate's terms lack per-example data: no interval, no verdict"}
    lo, hi = row["ci95"]
    winner = "not separable" if lo <= 0.0 <= hi else ("mix" if row["difference"] > 0 else "merge")
    return {"winner": winner, "best_merge": best, "difference": row["difference"], "ci95": row["ci95"],
            "p_value": row["p_value"], "n": row["n"]}


def _finite_interval(reps: np.ndarray) -> list[float] | None:
    """The percentile interval of the replicates where the ratio is defined (a resample whose specialist
    scores 0 has no relative degradation); None when fewer than half are."""
    finite = reps[np.isfinite(reps)]
    return list(percentile_interval(finite)) if finite.size >= reps.size / 2 else None


def degradation(measured: Mapping[str, Measured], variant: str, specialists: Mapping[str, str],
                task_metrics: Mapping[str, str], comparisons: Sequence[Mapping], *, base: str = "base",
                seed: int = 0, n_resamples: int = N_RESAMPLES) -> dict:
    """``variant``'s relative degradation (s − m) / s against each specialist on its own task's headline
    metric, with a paired bootstrap interval, and the mean over the tasks where it is defined (with its
    joint interval). A task is ``undefined`` (with the reason) when the specialist is not significantly
    better than the base there, or the base was not evaluated; ``not_computed`` when a side lacks it."""
    per_task, undefined, not_computed = {}, [], []
    reps = {}
    for task, spec_name in specialists.items():
        metric = task_metrics.get(task)
        spec, cand = measured[spec_name], measured[variant]
        if metric is None or metric not in spec.metrics or metric not in cand.metrics:
            lacking = [v for v, m in ((spec_name, spec), (variant, cand)) if metric not in m.metrics]
            not_computed.append({"task": task, "metric": metric, "missing_for": lacking})
            continue
        vs_base = find(comparisons, spec_name, base, metric)
        if base not in measured:
            undefined.append({"task": task, "metric": metric,
                              "reason": f"the base was not evaluated, so {spec_name} was never shown to gain "
                                        f"on {metric}"})
            continue
        if vs_base is None or vs_base["better"] != spec_name:
            shown = "" if vs_base is None else (f": {vs_base['difference']:+.4f} [{vs_base['ci95'][0]:+.4f}, "
                                                f"{vs_base['ci95'][1]:+.4f}], p = {vs_base['p_value']:.3g}")
            undefined.append({"task": task, "metric": metric,
                              "reason": f"{spec_name} is not significantly better than the base on {metric}{shown}"})
            continue
        s_sample, m_sample = spec.samples[metric], cand.samples[metric].aligned_to(spec.samples[metric].ids)
        reps[task] = (s_sample, m_sample)
        s, m = spec.metrics[metric], cand.metrics[metric]
        per_task[task] = {"metric": metric, "specialist": s, "variant": m, "degradation": (s - m) / s}
    mean, mean_ci = math.nan, None
    if reps:
        idx = joint_indices({t: s for t, (s, _) in reps.items()}, n_resamples, seed)
        by_task = {}
        with np.errstate(divide="ignore", invalid="ignore"):
            for task, (s_sample, m_sample) in reps.items():
                rs, rm = replicates(s_sample, idx[task]), replicates(m_sample, idx[task])
                by_task[task] = (rs - rm) / rs
                per_task[task]["ci95"] = _finite_interval(by_task[task])
            mean = sum(t["degradation"] for t in per_task.values()) / len(per_task)
            mean_ci = _finite_interval(np.mean(list(by_task.values()), axis=0))
    return {"variant": variant, "per_task": per_task, "undefined": undefined, "not_computed": not_computed,
            "mean": mean, "mean_ci95": mean_ci, "retention": 1 - mean}
