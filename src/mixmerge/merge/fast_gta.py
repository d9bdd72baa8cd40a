"""One tensor through a task-vector ("gta") method on the CPU, with the fused kernels of ``fused/``.

Two steps, so that a sweep can keep the first: ``plan_sparsity`` decides which entries each model keeps
(thresholds, random keys, DELLA's survivors, rescale factors; it depends on densities, epsilons,
gammas, the seed and the rescale mode, not on the weights), and ``merge_planned`` runs the one fused
pass that sparsifies, weights, elects signs, averages and adds the base. The result equals
``combine.merge_tensor`` on the same inputs (the torch reference; see tests/merge/test_fused.py).
Arrays are numpy (CPU torch tensors are accepted and used in place); torch is never imported here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mixmerge.merge import fused as F
from mixmerge.merge.common import KernelStats, tensor_key
from mixmerge.merge.params import MergeParams


@dataclass
class SparsityPlan:
    """What each model keeps of one tensor: per-model kernel arguments, or DELLA's survivors."""

    rule: np.ndarray
    thr: np.ndarray
    cutoff: np.ndarray
    lo: np.ndarray
    lo_cutoff: np.ndarray
    density: np.ndarray
    key: np.ndarray
    scale: np.ndarray
    scale_mode: int
    survivors: np.ndarray | None = None  # (n_models, n) sparsified deltas, DELLA only
    inputs_finite: bool = True


# The sparsifiers the fused kernels implement (None: no sparsification); others run the torch reference.
FUSED_SPARSIFIERS = (None, "magnitude", "random", "breadcrumbs", "della")


def applies(params: MergeParams, device) -> bool:
    """The fused path serves the task-vector methods on a CPU (on a GPU the torch reference runs);
    ``device`` is a name ("cpu", "cuda:0") or a torch device."""
    return (params.method.kind == "gta" and params.method.sparsify in FUSED_SPARSIFIERS
            and str(device).split(":")[0] == "cpu")


def _arrays(xs) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(x) for x in xs)


def plan_sparsity(tensor_name: str, base: np.ndarray, xs: Sequence[np.ndarray], params: MergeParams,
                  *, is_delta: bool, shape: tuple[int, ...], scratch: np.ndarray | None = None,
                  ranks: list | None = None) -> SparsityPlan:
    """Decide what every model keeps. ``xs`` holds one flat tensor per model: full weights, or task vectors when
    ``is_delta``; ``base`` is the flat base tensor; ``shape`` the tensor's (DELLA ranks within rows).
    DELLA writes its survivors into ``scratch`` (n_models * n floats) when given: a streamed merge
    reuses one buffer for every tensor instead of faulting in fresh pages. ``ranks`` (a list with one
    slot per model, kept by the caller across calls on the same task vectors) stores every entry's
    rank within its row on DELLA's first call and reuses them after: a sweep re-plans with one gather
    per entry instead of ranking again."""
    base_np, xs_np = np.asarray(base), _arrays(xs)
    n_models, n = len(xs_np), base_np.size
    kind, rescale = params.method.sparsify, params.rescale
    plan = SparsityPlan(rule=np.zeros(n_models, np.int64), thr=np.zeros(n_models, np.int32),
                        cutoff=np.zeros(n_models, np.int64), lo=np.full(n_models, -1, np.int32),
                        lo_cutoff=np.zeros(n_models, np.int64),
                        density=np.ones(n_models, np.float32), key=np.zeros(n_models, np.uint64),
                        scale=np.ones(n_models, np.float32),
                        scale_mode=F.SCALE_DIV if rescale == "inverse_prob" else F.SCALE_MUL)
    if kind == "della":
        n_rows = shape[0] if len(shape) >= 2 else 1
        return _plan_della(tensor_name, base_np, xs_np, params, plan, is_delta=is_delta, n_rows=n_rows,
                           scratch=scratch, ranks=ranks)
    for i in range(n_models):
        density = params.densities[i]
        if kind is None or density >= 1 or n == 0:
            continue
        plan.density[i] = density
        if kind == "magnitude":
            plan.rule[i] = F.KEEP_TOP
            plan.thr[i], plan.cutoff[i] = F.top_k_rule(xs_np, base_np, i, is_delta, max(1, int(density * n)))
        elif kind == "random":
            plan.rule[i] = F.KEEP_RANDOM
            plan.key[i] = tensor_key(params.seed, tensor_name, i)
        elif kind == "breadcrumbs":
            plan.rule[i] = F.KEEP_BAND
            n_keep = int(density * n)
            if n_keep == 0:
                plan.thr[i], plan.cutoff[i] = -1, 0  # keeps nothing (and, as the reference, no rescale)
                continue
            # the lowest n_bottom + n_keep entries minus the lowest n_bottom (kernels.sparsify_breadcrumbs)
            n_bottom = max(0, n - n_keep - int(params.gammas[i] * n))
            plan.thr[i], plan.cutoff[i] = F.lowest_rule(xs_np, base_np, i, is_delta, n_bottom + n_keep)
            plan.lo[i], plan.lo_cutoff[i] = F.lowest_rule(xs_np, base_np, i, is_delta, n_bottom)
        else:
            raise ValueError(f"unknown sparsifier {kind!r}")
        if rescale == "l1":
            plan.scale[i] = F.l1_factor(xs_np, base_np, i, is_delta, int(plan.rule[i]), int(plan.thr[i]),
                                        int(plan.cutoff[i]), int(plan.lo[i]), int(plan.lo_cutoff[i]), density,
                                        int(plan.key[i]))
        elif rescale == "inverse_prob":
            plan.scale[i] = density
    return plan


def _plan_della(tensor_name, base_np, xs_np, params, plan, *, is_delta, n_rows, scratch, ranks):
    n_models, n = len(xs_np), base_np.size
    survivors = (np.empty((n_models, n), np.float32) if scratch is None
                 else np.asarray(scratch).reshape(-1)[: n_models * n].reshape(n_models, n))
    for i in range(n_models):
        out = survivors[i]
        density = params.densities[i]
        if density >= 1:
            np.subtract(xs_np[i], 0 if is_delta else base_np, out=out)
            continue
        stored, mode = None, F.SORT
        if ranks is not None:
            if ranks[i] is None:
                ranks[i], mode = np.empty(n, F.rank_dtype(n // n_rows)), F.SORT_AND_STORE
            else:
                mode = F.USE_STORED
            stored = ranks[i]
        before, after = F.della_sparsify(xs_np, base_np, i, is_delta, n_rows, density, params.epsilons[i],
                                         tensor_key(params.seed, tensor_name, i),
                                         params.rescale == "inverse_prob", out, stored, mode)
        if not math.isfinite(before):
            plan.inputs_finite = False
        if params.rescale == "l1" and before >= 1e-7 and after >= 1e-7:
            plan.scale[i] = before / after
    plan.scale_mode = F.SCALE_MUL
    plan.survivors = survivors
    return plan


def merge_planned(base: np.ndarray, xs: Sequence[np.ndarray], plan: SparsityPlan, params: MergeParams,
                  *, is_delta: bool, out: np.ndarray | None = None) -> tuple[np.ndarray, KernelStats, int, int]:
    """base + lam * the method's combination of the planned sparse task vectors (float32, flat).

    Returns the merged tensor, its diagnostics, and the numbers of non-finite task-vector entries and
    non-finite results."""
    base = np.asarray(base)
    n_models, n = len(xs), base.size
    out = np.empty(n, np.float32) if out is None else np.asarray(out)
    if plan.survivors is not None:
        xs, is_delta = plan.survivors, True
        rule = np.zeros(n_models, np.int64)
    else:
        rule = plan.rule
    total = float(sum(params.weights))
    normalize = params.normalize and (params.method.consensus is not None or abs(total) >= 1e-8)
    counts = F.combine(_arrays(xs), base, is_delta, rule, plan.thr, plan.cutoff, plan.lo, plan.lo_cutoff, plan.density,
                       plan.key, plan.scale, plan.scale_mode, params.weights,
                       1 if params.method.consensus == "sum" else 0, normalize, total, params.lam, True,
                       out)
    kept, contested, conflicts, bad_in, bad_out = (int(c) for c in counts)
    stats = KernelStats(kept / max(n_models * n, 1), conflicts / contested if contested else 0.0)
    return out, stats, bad_in + (0 if plan.inputs_finite else 1), bad_out
