"""The correlation-aware merge's rule: from what the analysis measures on one tensor to how it is merged.

``merge=correlation`` (our answer to the paper's open question on merges that adapt to how each task
moved the model) merges every tensor on its own, with coefficients chosen from three numbers the delta
analysis measures there (``deltas.py``): the Pearson correlation r between the task vectors (mean over
pairs), their sign-conflict rate c (mean over pairs; independent symmetric deltas give 0.5, identical ones
0) and each task's L2 norm n_i. The rule, per tensor, with tau_i the task vectors and p_i the task priors
(``merge.weights`` scaled to mean 1, so the default ``weight: 0.5`` gives 1 each):

1. **Norm share.** b_i = (n_i / max_j n_j) ** ``norm_share_power``. The task that moved the tensor most
   keeps its whole delta; a task that barely moved it is damped, its small delta being less likely to be
   what that task relies on here and more likely to perturb the task that does. No delta is ever scaled
   up. Power 0 ignores the norms, 1 weights by relative norm, large powers give the tensor to one task.
   A task that did not move the tensor at all (n_i = 0) gets weight 0.
2. **Sign conflict -> TIES.** Where c > ``conflict_threshold`` the task vectors pull the same weights in
   opposite directions more often than chance, and adding them cancels both: the tensor is merged as TIES
   (trim each task vector to its top ``density`` by magnitude, elect the sign by the weighted sum, disjoint
   mean; Yadav et al. 2023, https://arxiv.org/abs/2306.01708) with weights p_i b_i. The more they
   conflict, the more is trimmed: the density falls linearly from ``density_max`` at the threshold to
   ``density_min`` at c = 1.
3. **Otherwise add, discounting redundancy.** Weights a p_i b_i with a = 1 / (1 + ``corr_strength`` (N-1)
   max(r, 0)) on the plain sum (task arithmetic, Ilharco et al. 2023, https://arxiv.org/abs/2212.04089).
   With strength 1 this is the weight that keeps every task's own movement along its own direction:
   for N task vectors of equal norm whose pairwise correlations are r (Pearson equals the cosine of
   zero-mean deltas), the merge m = a sum_i tau_i has <m, tau_j> = a |tau|^2 (1 + (N-1) r) = |tau_j|^2.
   Uncorrelated task vectors (r = 0) are simply added, weight 1 each; identical ones (r = 1) are
   averaged, weight 1/N, so the shared movement is not counted N times; strength 0 ignores r. Negative r
   (partial cancellation short of the conflict threshold) leaves the sum as task arithmetic has it.

Everything is scaled by ``merge.lambda``. A tensor no task moved is copied from the base ("copy").

Undefined statistics (one task, a constant delta, no position both moved) count as no correlation and no
conflict. This module holds the knobs and the decision on plain floats (no torch: configs are validated
without it); ``correlation_merge.py`` measures a tensor and applies the decision with the kernels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

# The rule's knobs, as merge.* keys (conf/merge/correlation.yaml has their defaults, and
# conf/hparams_search/space/correlation.yaml their search space).
RULE_KEYS = ("corr_strength", "norm_share_power", "conflict_threshold", "density_max", "density_min")
MODES = ("sum", "ties", "copy")


@dataclass(frozen=True)
class Decision:
    """How one tensor is merged: ``mode`` ("sum", "ties" or "copy"), the weight of each task vector
    (before ``merge.lambda``) and the density TIES trims to (1.0 outside "ties")."""

    mode: str
    weights: tuple[float, ...]
    density: float


@dataclass(frozen=True)
class CorrelationRule:
    """The knobs of ``merge=correlation`` (see the module docstring for what each one does)."""

    corr_strength: float = 1.0  # in [0, 1]: how much a positive correlation discounts the sum
    norm_share_power: float = 0.5  # >= 0: how sharply weights follow each task's relative norm
    conflict_threshold: float = 0.6  # in [0, 1]: sign-conflict rate above which the tensor is merged as TIES
    density_max: float = 0.7  # in (0, 1]: TIES density at the threshold
    density_min: float = 0.2  # in (0, density_max]: TIES density where every position conflicts

    def density_at(self, conflict: float) -> float:
        """The TIES density for a sign-conflict rate above the threshold: linear from ``density_max`` at
        the threshold down to ``density_min`` at 1."""
        if self.conflict_threshold >= 1:
            return self.density_max
        frac = min(1.0, max(0.0, (conflict - self.conflict_threshold) / (1 - self.conflict_threshold)))
        return self.density_max - (self.density_max - self.density_min) * frac

    def norm_factors(self, norms: Sequence[float]) -> list[float]:
        """b_i = (n_i / max n) ** power, 0 for a task that did not move the tensor."""
        top = max(norms)
        return [(n / top) ** self.norm_share_power if n > 0 else 0.0 for n in norms]

    def redundancy_discount(self, pearson: float | None, n_models: int) -> float:
        """a = 1 / (1 + strength (N-1) max(r, 0)): 1 for uncorrelated task vectors, 1/N for identical ones."""
        r = 0.0 if pearson is None or math.isnan(pearson) else max(0.0, pearson)
        return 1.0 / (1.0 + self.corr_strength * (n_models - 1) * r)

    def decide(self, norms: Sequence[float], pearson: float | None, conflict: float | None,
               priors: Sequence[float]) -> Decision:
        """The decision for one tensor from its task vectors' norms, mean pairwise Pearson r and mean
        pairwise sign-conflict rate (None or nan where undefined), and the task priors (any positive
        scale: they are rescaled to mean 1)."""
        n = len(norms)
        if len(priors) != n:
            raise ValueError(f"{len(priors)} task priors for {n} task vectors")
        if not any(x > 0 for x in norms):
            return Decision("copy", (0.0,) * n, 1.0)
        total = float(sum(priors))
        if not total > 0 or any(p < 0 for p in priors):
            raise ValueError(f"task priors {list(priors)!r} (merge.weights) must be non-negative with a positive sum")
        scaled = [n * float(p) / total for p in priors]
        factors = [p * b for p, b in zip(scaled, self.norm_factors(norms), strict=True)]
        if n >= 2 and conflict is not None and not math.isnan(conflict) and conflict > self.conflict_threshold:
            return Decision("ties", tuple(factors), self.density_at(conflict))
        a = self.redundancy_discount(pearson, n)
        return Decision("sum", tuple(a * f for f in factors), 1.0)

    def as_report(self) -> dict[str, float]:
        return asdict(self)


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(float(value)):
        raise ValueError(f"merge.{key}={value!r} must be a finite number")
    return float(value)


def resolve_correlation_rule(merge_cfg: Mapping[str, Any], method_kind: str,
                             prior_values: Sequence[float]) -> CorrelationRule | None:
    """The rule of a ``merge=correlation`` config (None for other methods), every knob checked; raises a
    ValueError naming the key and its valid range. ``prior_values`` are every value ``merge.weight(s)``
    can take (the task priors). The knobs are refused for other methods, and ``merge.density`` for this
    one (the rule chooses the density per tensor)."""
    given = {k: merge_cfg.get(k) for k in RULE_KEYS if merge_cfg.get(k) is not None}
    if method_kind != "correlation":
        if given:
            key = next(iter(given))
            raise ValueError(f"merge.{key} is a knob of merge=correlation only; remove it or use merge=correlation")
        return None
    if merge_cfg.get("density") is not None:
        raise ValueError("merge.density is chosen per tensor by merge=correlation; set merge.density_max and "
                         "merge.density_min (the TIES density at the conflict threshold and at full conflict) "
                         "instead")
    values = {k: _number(v, k) for k, v in given.items()}
    rule = CorrelationRule(**values)
    if not 0 <= rule.corr_strength <= 1:
        raise ValueError(f"merge.corr_strength={rule.corr_strength} is outside [0, 1] (0: ignore the correlation, "
                         f"1: identical task vectors are averaged)")
    if rule.norm_share_power < 0:
        raise ValueError(f"merge.norm_share_power={rule.norm_share_power} is negative; use 0 (ignore the norms) "
                         f"or more (damp the tasks that moved a tensor less)")
    if not 0 <= rule.conflict_threshold <= 1:
        raise ValueError(f"merge.conflict_threshold={rule.conflict_threshold} is outside [0, 1] (a sign-conflict "
                         f"rate; 0.5 is what independent task vectors give)")
    if not 0 < rule.density_max <= 1:
        raise ValueError(f"merge.density_max={rule.density_max} is outside (0, 1]")
    if not 0 < rule.density_min <= rule.density_max:
        raise ValueError(f"merge.density_min={rule.density_min} must be in (0, merge.density_max={rule.density_max}]")
    if any(p < 0 for p in prior_values) or not sum(prior_values) > 0:
        raise ValueError(f"merge.weight(s)={list(prior_values)!r}: merge=correlation reads the weights as task "
                         f"priors, which must be non-negative with a positive sum")
    return rule
