"""The merge math: pure functions on tensors, no files, no config objects.

The task-vector kernels and ``model_stock`` compute in the dtype of the tensors they are given (the
merge's compute dtype, ``merge.dtype``, float32 by default; mergekit computes in it too); ``linear_average``
and ``slerp`` compute in float32 whatever they are given, as mergekit's do, and the caller rounds the
result to the compute dtype.

Every merge method is a row in ``registry.METHODS`` that picks one sparsifier, one consensus rule and
the normalize/rescale defaults of the generalized task-arithmetic kernel (``merge_task_vectors``), or
one of the few kernels that do not fit it (``slerp``, ``model_stock``, ``fisher_weighted_average``).

Magnitude trimming uses a selection (``kth_largest``) for the threshold instead of a full sort:
O(n) instead of O(n log n). Ties at the threshold are broken by index (lowest first), so exactly
``int(density * n)`` entries are kept, as with a stable sort.

These functions are the reference: on a GPU the merge runs them as they are; on a CPU the task-vector
methods run through the fused kernels of ``fused/``, tested equal to these (tests/merge/test_fused.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mixmerge.merge.common import (  # noqa: F401 - part of the reference
    RESCALE_MODES,
    KernelStats,
    tensor_key,
    weight_divisor,
)


def task_vector(finetuned: torch.Tensor, base: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """tau = theta_ft - theta_base in ``dtype``, the compute dtype (Ilharco et al. 2023,
    https://arxiv.org/abs/2212.04089)."""
    return finetuned.to(dtype) - base.to(dtype)


_GOLDEN, _MIX1, _MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _signed64(u: int) -> int:
    return u - (1 << 64) if u >= 1 << 63 else u


def _shift_right(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (torch's ``>>`` is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def counter_uniform(key: int, shape, device: str | torch.device = "cpu") -> torch.Tensor:
    """Uniform float32 draws in [0, 1), entry j = splitmix64(key + (j + 1) * golden) >> 40, scaled by 2**-24.

    A counter-based generator (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3";
    splitmix64 by Steele et al. 2014): entry j's draw depends on (key, j) only. int64 products wrap,
    which gives the uint64 bits. ``fused._uniform`` is the same function for the CPU kernels.
    """
    n = math.prod(shape)
    z = torch.arange(1, n + 1, dtype=torch.int64, device=device) * _signed64(_GOLDEN) + _signed64(key)
    z = (z ^ _shift_right(z, 30)) * _signed64(_MIX1)
    z = (z ^ _shift_right(z, 27)) * _signed64(_MIX2)
    z = z ^ _shift_right(z, 31)
    return (_shift_right(z, 40).float() * 2.0**-24).reshape(shape)


def _rescale(delta: torch.Tensor, kept: torch.Tensor, mode: str | None, keep_prob=None) -> torch.Tensor:
    """Rescale a masked delta: ``l1`` matches the L1 norm of the unmasked delta (mergekit);
    ``inverse_prob`` divides each kept entry by its keep probability (the DARE and DELLA papers)."""
    if mode is None:
        return kept
    if mode == "l1" and kept.dtype not in (torch.float32, torch.float64):
        # a low-precision compute dtype: mergekit's sums and ratio, in that dtype (mergekit/sparsify.py)
        before, after = delta.abs().sum(), kept.abs().sum()
        if before < 1e-7 or after < 1e-7:
            return kept
        return kept * (before / after)
    if mode == "l1":
        # float64 sums: the parallel reduction order (thread count) cannot change the float32 result.
        before, after = float(delta.abs().double().sum()), float(kept.abs().double().sum())
        if before < 1e-7 or after < 1e-7:
            return kept
        return kept * (before / after)
    if mode == "inverse_prob":
        return kept / keep_prob
    raise ValueError(f"rescale mode {mode!r} is not one of {RESCALE_MODES}")


_SAMPLE_SIZE = 1 << 16


def kth_largest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The exact k-th largest entry of ``values`` (1 <= k <= n), by selection rather than a sort.

    Large tensors first bracket the answer with quantiles of a small fixed-seed sample, count the
    entries above the bracket and run ``kthvalue`` only on the few inside it; when the bracket misses
    (checked by the counts, so the result is always exact) it falls back to ``kthvalue`` on everything.
    """
    flat = values.reshape(-1)
    n = flat.numel()
    if not 1 <= k <= n:
        raise ValueError(f"k={k} is outside [1, {n}]")
    if k == 1:
        return flat.max()
    if k == n:
        return flat.min()
    if n > 16 * _SAMPLE_SIZE:
        gen = torch.Generator(device=flat.device).manual_seed(0)
        sample = flat[torch.randint(n, (_SAMPLE_SIZE,), generator=gen, device=flat.device)].sort().values
        q = 1 - k / n
        margin = 4 * math.sqrt(_SAMPLE_SIZE * q * (1 - q)) + 16  # ~4 sigma of the sample rank
        lo = sample[max(0, int(q * _SAMPLE_SIZE - margin))]
        hi = sample[min(_SAMPLE_SIZE - 1, int(math.ceil(q * _SAMPLE_SIZE + margin)))]
        n_above = int(torch.count_nonzero(flat > hi))
        inside = flat[(flat >= lo) & (flat <= hi)]
        need = k - n_above
        if 1 <= need <= inside.numel():
            return torch.kthvalue(inside, inside.numel() - need + 1).values
    return torch.kthvalue(flat, n - k + 1).values


def magnitude_threshold(abs_delta: torch.Tensor, k_keep: int) -> torch.Tensor:
    """The k-th largest value of ``abs_delta`` (a selection, not a sort)."""
    return kth_largest(abs_delta, k_keep)


def sparsify_magnitude(delta: torch.Tensor, density: float, rescale: str | None = None) -> torch.Tensor:
    """TIES "trim": keep the top ``density`` fraction of entries by |delta|, zero the rest.

    Yadav et al. 2023, https://arxiv.org/abs/2306.01708 (Sec. 3, step 1). ``k = max(1, int(density*n))``
    as in mergekit, so a positive density keeps at least one entry.
    """
    if density >= 1:
        return delta
    if delta.numel() == 0:
        return delta
    k = max(1, int(density * delta.numel()))
    abs_delta = delta.abs().float()  # selection in float32 (exact for bfloat16/float16 magnitudes)
    thr = magnitude_threshold(abs_delta, k)
    keep = abs_delta >= thr
    n_keep = int(torch.count_nonzero(keep))
    if n_keep > k and float(thr) > 0:
        # Ties at the threshold (common: float32 deltas of a quantized base repeat values): keep
        # exactly k, the tied entries with the lowest indices, as a stable descending sort would.
        keep = abs_delta > thr
        tied = torch.nonzero((abs_delta == thr).reshape(-1)).squeeze(1)
        keep.reshape(-1)[tied[: k - (n_keep - tied.numel())]] = True
    kept = torch.where(keep, delta, 0.0)
    return _rescale(delta, kept, rescale, density)


def _lowest(flat: torch.Tensor, count: int) -> torch.Tensor:
    """Mask of the ``count`` smallest entries of ``flat``, ties broken by index (a stable ascending sort)."""
    n = flat.numel()
    if count <= 0:
        return torch.zeros_like(flat, dtype=torch.bool)
    if count >= n:
        return torch.ones_like(flat, dtype=torch.bool)
    v = kth_largest(flat, n - count + 1)  # the count-th smallest
    mask = flat < v
    tied = torch.nonzero(flat == v).squeeze(1)
    mask[tied[: count - int(torch.count_nonzero(mask))]] = True
    return mask


def sparsify_breadcrumbs(
    delta: torch.Tensor, density: float, gamma: float, rescale: str | None = None
) -> torch.Tensor:
    """Model Breadcrumbs: drop the largest ``gamma`` fraction (outliers) and the smallest entries so
    that a ``density`` fraction is kept. Davari & Belilovsky 2023, https://arxiv.org/abs/2312.06795.

    Counts follow mergekit (mergekit/sparsify.py, ``magnitude_outliers``): ascending by |delta|, the
    ranks ``n_bottom .. n_bottom + int(density*n) - 1`` are kept, ``n_bottom = n - int(density*n) -
    int(gamma*n)`` (the outlier cut shrinks when density + gamma > 1), so exactly ``int(density*n)``
    entries survive even when magnitudes tie at either cut (ties broken by index, as a stable sort).
    (mergekit keeps nothing when ``int(gamma*n)`` is 0, its slice ``[n_bottom:-0]`` being empty; we keep
    the ``int(density*n)`` entries.)
    """
    if density >= 1:
        return delta
    n = delta.numel()
    n_keep = int(density * n)
    if n == 0:
        return delta
    if n_keep == 0:
        return torch.zeros_like(delta)
    n_bottom = max(0, n - n_keep - int(gamma * n))
    flat = delta.abs().reshape(-1).float()
    keep = _lowest(flat, n_bottom + n_keep) & ~_lowest(flat, n_bottom)
    kept = torch.where(keep.reshape(delta.shape), delta, 0.0)
    return _rescale(delta, kept, rescale, density)


def sparsify_random(delta: torch.Tensor, density: float, key: int, rescale: str | None = "l1") -> torch.Tensor:
    """DARE: drop each entry with probability 1 - density (draws from ``counter_uniform(key)``), then
    rescale the survivors.

    Yu et al. 2024, https://arxiv.org/abs/2311.03099. The paper rescales by 1/density
    (``rescale="inverse_prob"``); mergekit 0.1.5 matches the L1 norm instead (``"l1"``).
    """
    if density >= 1:
        return delta
    keep = counter_uniform(key, delta.shape, delta.device) < density
    kept = torch.where(keep, delta, 0.0)
    return _rescale(delta, kept, rescale, density)


def della_keep_probabilities(delta: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """MagPrune keep probabilities: within each row, rank entries by |delta| and map the ranks linearly
    onto [density - epsilon, density + epsilon] (smallest magnitude -> lowest probability).

    Deep et al. 2024 (DELLA), https://arxiv.org/abs/2406.11617, Sec. 3.1. 1-D tensors are one row.
    """
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.reshape(delta.shape[0], -1)
    rows = rows.float()  # ranks up to n_cols must be exact (bfloat16 holds integers up to 256 only)
    n_cols = rows.shape[1]
    order = torch.argsort(rows.abs(), dim=1, stable=True)  # stable: equal magnitudes rank alike on any thread count
    ranks = torch.empty_like(rows)
    ranks.scatter_(1, order, torch.arange(n_cols, dtype=rows.dtype, device=rows.device).expand_as(rows))
    rank_norm = ranks / max(n_cols - 1, 1)
    probs = (density - epsilon) + rank_norm * (2 * epsilon)
    return probs.clamp_(0, 1).reshape(delta.shape)


def sparsify_della(
    delta: torch.Tensor, density: float, epsilon: float, key: int, rescale: str | None = "l1"
) -> torch.Tensor:
    """DELLA's MagPrune: drop entries at random with magnitude-rank-dependent probabilities, rescale.

    Deep et al. 2024, https://arxiv.org/abs/2406.11617. The paper rescales each survivor by 1/p_i
    (``rescale="inverse_prob"``); mergekit matches the L1 norm (``"l1"``, our default).
    """
    if density >= 1:
        return delta
    probs = della_keep_probabilities(delta, density, epsilon)
    keep = counter_uniform(key, delta.shape, delta.device) < probs
    kept = torch.where(keep, delta, 0.0)
    return _rescale(delta, kept, rescale, probs)


def sign_consensus_mask(weighted_deltas: torch.Tensor) -> torch.Tensor:
    """TIES "elect": the sign of the summed (weighted) deltas wins; True where a model agrees with it.

    Yadav et al. 2023, https://arxiv.org/abs/2306.01708 (Sec. 3, step 2). A zero sum elects "+".
    ``weighted_deltas`` has the models on dim 0.
    """
    elected_positive = weighted_deltas.sum(dim=0) >= 0
    return torch.where(elected_positive, weighted_deltas >= 0, weighted_deltas <= 0) & (weighted_deltas != 0)


def delta_stats(deltas: torch.Tensor) -> KernelStats:
    n_models = deltas.shape[0]
    kept = int(torch.count_nonzero(deltas)) / max(deltas.numel(), 1)
    if n_models == 1:
        return KernelStats(kept, 0.0)
    if n_models == 2:  # the common case, without count tensors
        a, b = deltas[0], deltas[1]
        both = (a != 0) & (b != 0)
        n_contested = int(torch.count_nonzero(both))
        conflicts = int(torch.count_nonzero(both & ((a > 0) ^ (b > 0))))
    else:
        positive, negative = (deltas > 0).any(dim=0), (deltas < 0).any(dim=0)
        n_contested = int(((deltas != 0).sum(dim=0) >= 2).sum())
        conflicts = int((positive & negative).sum())
    return KernelStats(kept, conflicts / n_contested if n_contested else 0.0)


_CHUNK = 1 << 24  # positions per chunk: bounds the temporaries of huge tensors (small chunks lose to per-op overhead)


def merge_task_vectors(
    deltas: torch.Tensor,
    weights: Sequence[float],
    *,
    consensus: str | None,
    normalize: bool,
    lam: float = 1.0,
    base: torch.Tensor | None = None,
) -> torch.Tensor:
    """The generalized task-arithmetic combination of already-sparsified deltas (models on dim 0).

    Without consensus: sum_i w_i tau_i (task arithmetic, https://arxiv.org/abs/2212.04089), divided by
    sum_i w_i when ``normalize``. With ``consensus="sum"`` (TIES, https://arxiv.org/abs/2306.01708):
    only the entries agreeing with the elected sign count, and ``normalize`` divides by the sum of the
    agreeing models' weights (the "disjoint mean"). The result is multiplied by ``lam`` and added to
    ``base`` when given. Positions are independent, so huge tensors run in chunks of ``_CHUNK``
    positions, which bounds the temporaries.
    """
    shape = deltas.shape[1:]
    flat = deltas.reshape(deltas.shape[0], -1)
    out = torch.empty(flat.shape[1], dtype=flat.dtype, device=deltas.device)
    base_flat = base.reshape(-1) if base is not None else None
    w = torch.tensor(list(weights), dtype=flat.dtype, device=flat.device).reshape(-1, 1)
    # In a low-precision compute dtype every step rounds, so the steps are mergekit's: the divisor is the
    # sum of the rounded weights, and TIES elects the sign of the rounded sum of the weighted deltas.
    low_precision = flat.dtype not in (torch.float32, torch.float64)
    total = float(w.sum()) if low_precision else float(sum(weights))
    for start in range(0, flat.shape[1], _CHUNK):
        stop = min(start + _CHUNK, flat.shape[1])
        weighted = flat[:, start:stop] * w
        if consensus is None:
            mixed = weighted.sum(dim=0)
            if normalize and abs(total) >= 1e-8:
                mixed /= total
        elif consensus == "sum":
            # Same result as masking with sign_consensus_mask, in fewer passes: the agreeing entries of
            # an elected "+" position sum to P (the positive parts), of a "-" position to N, and P + N
            # is the sum that elects the sign.
            pos_sum = weighted.clamp(min=0).sum(dim=0)
            neg_sum = weighted.clamp(max=0).sum(dim=0)
            elected_positive = (weighted.sum(dim=0) if low_precision else pos_sum + neg_sum) >= 0
            mixed = torch.where(elected_positive, pos_sum, neg_sum)
            if normalize:
                agree = torch.where(elected_positive, weighted > 0, weighted < 0)
                divisor = (agree * w).sum(dim=0)
                mixed /= torch.where(divisor == 0, 1.0, divisor)
        else:
            raise ValueError(f"consensus {consensus!r} is not one of None, 'sum'")
        if lam != 1:
            mixed *= lam
        if base_flat is not None:
            mixed += base_flat[start:stop]
        out[start:stop] = mixed
    return out.reshape(shape)


def linear_average(tensors: Sequence[torch.Tensor], weights: Sequence[float], normalize: bool = True):
    """Model soup: sum_i w_i theta_i (/ sum_i w_i). Wortsman et al. 2022, https://arxiv.org/abs/2203.05482."""
    divisor = weight_divisor(weights, normalize)  # folded into the weights: one pass less
    out = tensors[0].float() * (float(weights[0]) / divisor)
    for t, w in zip(tensors[1:], weights[1:], strict=True):
        out.add_(t.float(), alpha=float(w) / divisor)
    return out


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, dot_threshold: float = 0.9995, eps: float = 1e-8):
    """Spherical linear interpolation between two whole tensors (Shoemake 1985; used for LLMs by
    mergekit, https://en.wikipedia.org/wiki/Slerp): the angle comes from the normalised tensors, the
    interpolation is applied to the raw ones; nearly collinear tensors fall back to linear interpolation.
    """
    a, b = v0.float(), v1.float()
    na, nb = a.norm(), b.norm()
    if na < eps or nb < eps:
        return (1 - t) * a + t * b
    dot = float(((a / na) * (b / nb)).sum().clamp(-1, 1))
    if abs(dot) > dot_threshold:
        return (1 - t) * a + t * b
    theta = math.acos(dot)
    sin_theta = math.sin(theta)
    return a * (math.sin((1 - t) * theta) / sin_theta) + b * (math.sin(t * theta) / sin_theta)


def model_stock(base: torch.Tensor, finetuned: Sequence[torch.Tensor], filter_wise: bool = False):
    """Model Stock: interpolate the average of N fine-tuned weights towards the base with
    t = N cos(theta) / (1 + (N - 1) cos(theta)), theta the mean pairwise angle between task vectors.

    Jang et al. 2024, https://arxiv.org/abs/2403.19522 (Eq. 6). ``filter_wise`` uses one angle per row.
    """
    if len(finetuned) < 2:
        raise ValueError("model_stock needs at least two fine-tuned models (it measures their angle)")
    shape, dtype = base.shape, base.dtype  # computed in the base's dtype (the compute dtype), as mergekit
    if filter_wise and base.dim() >= 1:
        w0 = base.reshape(base.shape[0] if base.dim() > 1 else 1, -1)
        ws = [m.to(dtype).reshape(w0.shape) for m in finetuned]
    else:
        w0 = base.reshape(1, -1)
        ws = [m.to(dtype).reshape(1, -1) for m in finetuned]
    offsets = [w - w0 for w in ws]
    cosines = []
    for i, oa in enumerate(offsets):
        for ob in offsets[i + 1:]:
            denom = (oa.norm(dim=-1) * ob.norm(dim=-1)).clamp(min=1e-6)
            cosines.append(((oa * ob).sum(dim=-1) / denom).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    n = len(ws)
    denom = 1 + (n - 1) * cos
    singular = denom.abs() < 1e-6
    ratio = torch.where(singular, torch.zeros_like(cos), n * cos / torch.where(singular, 1.0, denom))
    average = sum(ws) / n
    return (ratio * average + (1 - ratio) * w0).reshape(shape)


def fisher_weighted_average(
    tensors: Sequence[torch.Tensor], fishers: Sequence[torch.Tensor], weights: Sequence[float], floor: float = 1e-6
):
    """Fisher merging: theta* = sum_i w_i F_i theta_i / sum_i w_i F_i, with F_i the diagonal Fisher of
    model i (floored so parameters no model cares about fall back to the weighted mean).

    Matena & Raffel 2022, https://arxiv.org/abs/2111.09832 (Eq. 3).
    """
    num = torch.zeros_like(tensors[0], dtype=torch.float32)
    den = torch.zeros_like(num)
    for t, f, w in zip(tensors, fishers, weights, strict=True):
        fw = (f.float() + floor) * float(w)
        num.add_(fw * t.float())
        den.add_(fw)
    return num / den
