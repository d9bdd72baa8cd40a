"""Uncertainty of evaluation metrics: seeded bootstrap intervals and paired tests, pure numpy.

Every metric the suite reports is a ratio of sums over evaluated examples: pass@k and BLEU are means of
per-problem / per-example scores (denominator 1 each), held-out loss is total NLL over total target
tokens. ``Sample`` holds those per-example numerators and denominators, keyed by example id so two models
evaluated on the same examples can be paired. Intervals are percentile bootstraps over examples
(Efron & Tibshirani 1993, ch. 13); the aggregate resamples every task's examples in the same replicate,
and a paired comparison applies the *same* resampled indices to both models. p-values come from an exact
McNemar (sign) test where both sides are 0/1 per example, else from a paired randomisation test that
swaps the two models' results per example (Good 2005, "Permutation, Parametric and Bootstrap Tests").

scipy's ``stats.bootstrap`` resamples one statistic of equal-length paired samples; joint resampling of
several tasks of different sizes with shared indices across two models is not among its modes, so this
module draws the indices itself (a few vectorised numpy lines).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
N_RESAMPLES = 2000
N_PERMUTATIONS = 10000
_CHUNK = 1000


@dataclass(frozen=True)
class Sample:
    """Per-example observations of one metric: the metric is ``sum(numerators) / sum(denominators)``."""

    ids: tuple[str, ...]
    numerators: np.ndarray
    denominators: np.ndarray

    @classmethod
    def of_scores(cls, scores: Mapping[str, float]) -> Sample:
        """A mean of per-example scores (pass@k per problem, sentence BLEU per example)."""
        ids = tuple(scores)
        return cls(ids, np.asarray([float(scores[i]) for i in ids]), np.ones(len(ids)))

    @classmethod
    def of_ratios(cls, sums: Mapping[str, tuple[float, float]]) -> Sample:
        """A ratio of sums, e.g. held-out loss = Σ NLL / Σ target tokens, one (nll, tokens) per example."""
        ids = tuple(sums)
        return cls(ids, np.asarray([float(sums[i][0]) for i in ids]), np.asarray([float(sums[i][1]) for i in ids]))

    def __post_init__(self) -> None:
        if len(self.ids) == 0:
            raise ValueError("a metric sample needs at least one example")
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("example ids of a metric sample must be unique")
        if self.numerators.shape != (len(self.ids),) or self.denominators.shape != (len(self.ids),):
            raise ValueError("numerators and denominators need one value per example id")
        if float(self.denominators.sum()) <= 0:
            raise ValueError("a metric sample's denominators must sum to a positive number")

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def value(self) -> float:
        return float(self.numerators.sum() / self.denominators.sum())

    @property
    def is_binary(self) -> bool:
        return bool(np.all(self.denominators == 1) and np.all((self.numerators == 0) | (self.numerators == 1)))

    def aligned_to(self, ids: Sequence[str]) -> Sample:
        """The same observations reordered to ``ids``; an error names what the two samples do not share."""
        index = {example: i for i, example in enumerate(self.ids)}
        missing = [i for i in ids if i not in index]
        if missing or len(ids) != self.n:
            raise ValueError(f"paired comparison needs the same examples on both sides; "
                             f"{len(missing)} of {len(ids)} missing here (e.g. {missing[:3]}), {self.n} here")
        order = np.asarray([index[i] for i in ids])
        return Sample(tuple(ids), self.numerators[order], self.denominators[order])


def unique_ids(ids: Sequence[str]) -> list[str]:
    """``ids`` with repeats made unique in order (``x``, ``x#2``, ...), so examples that share a source id
    still pair one to one between two models evaluated on the same list."""
    seen: dict[str, int] = {}
    out = []
    for i in ids:
        seen[i] = seen.get(i, 0) + 1
        out.append(i if seen[i] == 1 else f"{i}#{seen[i]}")
    return out


def samples_to_json(samples: Mapping[str, Sample]) -> dict:
    """``{metric: {"ids", "numerators", "denominators"}}``: plain lists, for an evaluation's ``samples.json``."""
    return {name: {"ids": list(s.ids), "numerators": s.numerators.tolist(), "denominators": s.denominators.tolist()}
            for name, s in samples.items()}


def samples_from_json(data: Mapping) -> dict[str, Sample]:
    """The inverse of ``samples_to_json``."""
    return {name: Sample(tuple(d["ids"]), np.asarray(d["numerators"], dtype=float),
                         np.asarray(d["denominators"], dtype=float)) for name, d in data.items()}


def mean_over_replicates(samples: Sequence[Sample]) -> Sample:
    """One sample whose value is the mean of the replicates' values: per example, the mean numerator and
    denominator over replicates (training seeds) evaluated on the same examples.

    Exact when the denominators agree across replicates (pass@k, BLEU: 1; held-out loss: the target token
    counts, fixed by the examples), which is how the suite produces them. An interval from it treats the
    seeds as fixed: it measures example noise; the seeds' own spread is reported beside it.
    """
    first = samples[0]
    aligned = [s.aligned_to(first.ids) for s in samples]
    return Sample(first.ids, np.mean([s.numerators for s in aligned], axis=0),
                  np.mean([s.denominators for s in aligned], axis=0))


def resample_indices(n: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``n_resamples`` bootstrap draws of ``n`` example indices with replacement: shape [n_resamples, n]."""
    return rng.integers(0, n, size=(n_resamples, n))


def replicates(sample: Sample, idx: np.ndarray) -> np.ndarray:
    return sample.numerators[idx].sum(axis=1) / sample.denominators[idx].sum(axis=1)


def percentile_interval(replicates: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` interval of bootstrap replicates (numpy's linear percentile)."""
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(replicates, [tail, 100 - tail])
    return float(lo), float(hi)


def bootstrap_ci(sample: Sample, *, n_resamples: int = N_RESAMPLES, seed: int = 0,
                 level: float = LEVEL) -> tuple[float, float]:
    """Percentile bootstrap interval of one metric over its examples."""
    rng = np.random.default_rng(seed)
    return percentile_interval(replicates(sample, resample_indices(sample.n, n_resamples, rng)), level)


AggregateFn = Callable[[Mapping[str, np.ndarray]], np.ndarray]


def mean_of_scaled(scales: Mapping[str, float]) -> AggregateFn:
    """The aggregate ``mean(metric * scale)`` over terms, applied to arrays of replicates."""
    def combine(values: Mapping[str, np.ndarray]) -> np.ndarray:
        return sum(np.asarray(values[name]) * float(scale) for name, scale in scales.items()) / len(scales)
    return combine


def joint_indices(samples: Mapping[str, Sample], n_resamples: int, seed: int) -> dict[str, np.ndarray]:
    """One index matrix per metric; metrics over the same examples (same ids) share it, as they should."""
    rng = np.random.default_rng(seed)
    by_ids: dict[tuple[str, ...], np.ndarray] = {}
    out = {}
    for name in sorted(samples):
        ids = samples[name].ids
        if ids not in by_ids:
            by_ids[ids] = resample_indices(len(ids), n_resamples, rng)
        out[name] = by_ids[ids]
    return out


def aggregate_ci(samples: Mapping[str, Sample], combine: AggregateFn, *, n_resamples: int = N_RESAMPLES,
                 seed: int = 0, level: float = LEVEL) -> tuple[float, float]:
    """Interval of an aggregate of several metrics, every task's examples resampled in each replicate."""
    idx = joint_indices(samples, n_resamples, seed)
    return percentile_interval(combine({name: replicates(s, idx[name]) for name, s in samples.items()}), level)


@dataclass(frozen=True)
class Comparison:
    """``a − b`` on the same examples: the difference, its bootstrap interval and a two-sided p-value."""

    difference: float
    ci95: tuple[float, float]
    p_value: float
    n: int
    test: str

    @property
    def separable(self) -> bool:
        """The interval excludes 0: the data support a difference at the interval's level."""
        return not (self.ci95[0] <= 0.0 <= self.ci95[1])


def exact_mcnemar_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value for paired 0/1 outcomes: a binomial(½) test on discordant pairs."""
    a, b = np.asarray(a).astype(bool), np.asarray(b).astype(bool)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


def _swap_masks(n: int, n_permutations: int, rng: np.random.Generator) -> np.ndarray:
    return rng.random((n_permutations, n)) < 0.5


def randomisation_p(pairs: Mapping[str, tuple[Sample, Sample]], combine: AggregateFn | None = None, *,
                    n_permutations: int = N_PERMUTATIONS, seed: int = 0) -> float:
    """Two-sided paired randomisation p-value of ``combine(a) − combine(b)`` (one metric if no combine).

    Under the null the two models are exchangeable on every example, so each example's pair of results is
    swapped with probability ½; p = (1 + #|d*| ≥ |d|) / (1 + permutations).
    """
    rng = np.random.default_rng(seed)
    combine = combine or (lambda values: next(iter(values.values())))
    observed = {name: a.value - b.value for name, (a, b) in pairs.items()}
    d_obs = abs(float(np.asarray(combine({k: np.asarray(v) for k, v in observed.items()}))))
    extreme = 0
    for start in range(0, n_permutations, _CHUNK):  # bounded memory: _CHUNK × examples per array
        rows = min(_CHUNK, n_permutations - start)
        permuted = {}
        for name in sorted(pairs):
            a, b = pairs[name]
            swap = _swap_masks(a.n, rows, rng)
            num_a = np.where(swap, b.numerators, a.numerators).sum(axis=1)
            den_a = np.where(swap, b.denominators, a.denominators).sum(axis=1)
            num_b = np.where(swap, a.numerators, b.numerators).sum(axis=1)
            den_b = np.where(swap, a.denominators, b.denominators).sum(axis=1)
            permuted[name] = num_a / den_a - num_b / den_b
        extreme += int(np.sum(np.abs(combine(permuted)) >= d_obs - 1e-12))
    return (1 + extreme) / (1 + n_permutations)


def paired_ci(a: Sample, b: Sample, statistic: Callable[[np.ndarray, np.ndarray], np.ndarray], *,
              n_resamples: int = N_RESAMPLES, seed: int = 0, level: float = LEVEL) -> tuple[float, float]:
    """Bootstrap interval of ``statistic(value_a, value_b)`` (vectorised over replicates), the same resampled
    examples for both models: e.g. ``a − b``, or a relative degradation ``(a − b) / a``."""
    b = b.aligned_to(a.ids)
    idx = resample_indices(a.n, n_resamples, np.random.default_rng(seed))
    with np.errstate(divide="ignore", invalid="ignore"):
        return percentile_interval(statistic(replicates(a, idx), replicates(b, idx)), level)


def compare(a: Sample, b: Sample, *, n_resamples: int = N_RESAMPLES, seed: int = 0,
            level: float = LEVEL) -> Comparison:
    """Paired comparison of one metric of two models evaluated on the same examples."""
    b = b.aligned_to(a.ids)
    ci = paired_ci(a, b, np.subtract, n_resamples=n_resamples, seed=seed, level=level)
    if a.is_binary and b.is_binary:
        p, test = exact_mcnemar_p(a.numerators, b.numerators), "exact McNemar"
    else:
        p, test = randomisation_p({"m": (a, b)}, seed=seed), "paired randomisation"
    return Comparison(a.value - b.value, ci, p, a.n, test)


def compare_aggregate(a: Mapping[str, Sample], b: Mapping[str, Sample], combine: AggregateFn, *,
                      n_resamples: int = N_RESAMPLES, seed: int = 0, level: float = LEVEL) -> Comparison:
    """Paired comparison of an aggregate of several metrics: shared indices per task, both models."""
    if set(a) != set(b):
        raise ValueError(f"aggregate comparison needs the same metrics on both sides: {sorted(a)} vs {sorted(b)}")
    b = {name: b[name].aligned_to(a[name].ids) for name in a}
    idx = joint_indices(a, n_resamples, seed)
    reps = combine({n: replicates(a[n], idx[n]) for n in a}) - combine({n: replicates(b[n], idx[n]) for n in a})
    diff = float(np.asarray(combine({n: np.asarray(a[n].value) for n in a}))
                 - np.asarray(combine({n: np.asarray(b[n].value) for n in a})))
    p = randomisation_p({n: (a[n], b[n]) for n in a}, combine, seed=seed)
    return Comparison(diff, percentile_interval(reps, level), p, sum(s.n for s in a.values()),
                      "paired randomisation")
