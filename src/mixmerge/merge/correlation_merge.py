"""``merge=correlation`` on one tensor: measure its task vectors as the analysis does, decide, combine (pure).

The statistics are the analysis' own (``deltas.py``: L2 norms, Pearson r and sign-conflict rate, in
float64, streamed in chunks so a huge tensor never gets a float64 copy); the rule that turns them into a
mode, weights and a density, with its reasoning, is ``correlation_rule.py``; the combination is the
generalized task-arithmetic kernel and TIES' magnitude trim of ``kernels.py``. The decision comes back as
the tensor's diagnostics, so ``merge_report.json`` shows per tensor what the rule chose and why.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mixmerge.merge import kernels as K
from mixmerge.merge.common import KernelStats
from mixmerge.merge.correlation_rule import CorrelationRule, Decision
from mixmerge.merge.deltas import NormAccumulator, PairAccumulator

_CHUNK = 1 << 22  # entries per chunk of the statistics: 32 MB float64 temporaries whatever the tensor's size


@dataclass(frozen=True)
class Measurement:
    """What the rule reads from one tensor: each task vector's L2 norm, the mean over pairs of Pearson r and
    of the sign-conflict rate (None where no pair defines it: one task, constant deltas, no shared move)."""

    norms: tuple[float, ...]
    pearson: float | None
    sign_conflict_rate: float | None

    @property
    def norm_shares(self) -> tuple[float, ...]:
        total = sum(self.norms)
        return tuple(n / total if total > 0 else 0.0 for n in self.norms)


def _mean_defined(values: Sequence[float]) -> float | None:
    defined = [v for v in values if not math.isnan(v)]
    return sum(defined) / len(defined) if defined else None


def measure(deltas: Sequence[torch.Tensor]) -> Measurement:
    """Norms, mean pairwise Pearson r and mean pairwise sign-conflict rate of the task vectors of one tensor."""
    flats = [d.reshape(-1) for d in deltas]
    norms: list[float | None] = [None] * len(flats)
    pearsons, conflicts = [], []
    for i, j in itertools.combinations(range(len(flats)), 2):
        pair = PairAccumulator()
        for start in range(0, flats[i].numel(), _CHUNK):
            pair.update(flats[i][start:start + _CHUNK], flats[j][start:start + _CHUNK])
        pearsons.append(pair.pearson)
        conflicts.append(pair.sign_conflict_rate)
        norms[i], norms[j] = pair.l2_x, pair.l2_y  # the pair's raw moments hold both norms
    for i, flat in enumerate(flats):
        if norms[i] is None:  # one task: no pair measured it
            acc = NormAccumulator()
            for start in range(0, flat.numel(), _CHUNK):
                acc.update(flat[start:start + _CHUNK])
            norms[i] = acc.l2
    return Measurement(tuple(norms), _mean_defined(pearsons), _mean_defined(conflicts))


@dataclass(frozen=True)
class CorrelationStats(KernelStats):
    """A tensor's diagnostics (kept fraction and sign conflicts of what was combined, as for every method)
    plus the rule's inputs and decision, for ``merge_report.json``."""

    mode: str = "sum"
    weights: tuple[float, ...] = ()
    density: float = 1.0
    pearson: float | None = None
    input_sign_conflict_rate: float | None = None
    norm_shares: tuple[float, ...] = ()

    def details(self) -> dict:
        def r6(x):
            return None if x is None else round(x, 6)

        return {"mode": self.mode, "weights": [r6(w) for w in self.weights], "density": r6(self.density),
                "pearson": r6(self.pearson), "input_sign_conflict_rate": r6(self.input_sign_conflict_rate),
                "norm_shares": [r6(s) for s in self.norm_shares]}


def combine(base: torch.Tensor, stacked: torch.Tensor, decision: Decision, *, lam: float, normalize: bool = True,
            rescale: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """base + lambda x the decision's combination of the task vectors ``stacked`` (models on dim 0); also
    returns the task vectors as combined (trimmed in "ties" mode), for the diagnostics."""
    base32 = base.float()
    if decision.mode == "copy":
        return base32.clone(), stacked
    if decision.mode == "ties":
        trimmed = torch.stack([K.sparsify_magnitude(d, decision.density, rescale) for d in stacked])
        return K.merge_task_vectors(trimmed, decision.weights, consensus="sum", normalize=normalize, lam=lam,
                                    base=base32), trimmed
    if decision.mode == "sum":
        return K.merge_task_vectors(stacked, decision.weights, consensus=None, normalize=False, lam=lam,
                                    base=base32), stacked
    raise ValueError(f"unknown correlation-merge mode {decision.mode!r}")


def merge_correlated(base: torch.Tensor, deltas: torch.Tensor | Sequence[torch.Tensor], rule: CorrelationRule,
                     priors: Sequence[float], *, lam: float = 1.0, normalize: bool = True,
                     rescale: str | None = None, measured: Measurement | None = None, with_stats: bool = True,
                     ) -> tuple[torch.Tensor, CorrelationStats]:
    """One tensor of ``merge=correlation``: the float32 merge of ``base`` and its task vectors ``deltas``
    under ``rule`` (``priors``: the task priors, ``merge.weights``), and what was measured and decided.
    ``normalize`` and ``rescale`` apply to the tensors merged as TIES (its disjoint mean, its trim).
    ``measured``: the task vectors' ``measure``, when known (a sweep's trials share it). Without
    ``with_stats`` the kept fraction and sign conflicts of what was combined are not counted (nan)."""
    stacked = deltas if isinstance(deltas, torch.Tensor) else torch.stack([d.float() for d in deltas])
    measured = measure(list(stacked)) if measured is None else measured
    decision = rule.decide(measured.norms, measured.pearson, measured.sign_conflict_rate, priors)
    merged, combined = combine(base, stacked, decision, lam=lam, normalize=normalize, rescale=rescale)
    kept = K.delta_stats(combined) if with_stats else KernelStats(math.nan, math.nan)
    stats = CorrelationStats(kept.kept_fraction, kept.sign_conflict_rate, decision.mode, decision.weights,
                             decision.density, measured.pearson, measured.sign_conflict_rate, measured.norm_shares)
    return merged, stats
