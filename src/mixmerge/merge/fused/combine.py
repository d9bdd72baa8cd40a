"""The combine kernels: sparsify, sign election, disjoint mean, lambda and the base in one pass (with
the report's counts), the L1 rescale factor, linear's weighted sum and the bfloat16 cast."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from mixmerge.merge.fused.primitives import (
    BLOCK,
    KEEP_BAND,
    KEEP_RANDOM,
    KEEP_TOP,
    SCALE_DIV,
    SCALE_MUL,
    SCALE_NONE,
    _delta,
    _f32_bits,
    _fma,
)
from mixmerge.merge.fused.rng import _uniform


def l1_factor(xs, base, i, is_delta, rule, thr, cutoff, lo, lo_cutoff, density, key) -> float:
    """sum |delta| / sum |kept| (1 when either is ~0), summed in a fixed block order."""
    sums = _abs_sums(xs, base, i, is_delta, rule, thr, cutoff, lo, lo_cutoff, np.float32(density), np.uint64(key))
    before, after = float(sums[:, 0].sum()), float(sums[:, 1].sum())
    return 1.0 if before < 1e-7 or after < 1e-7 else before / after




_TILE = 1024  # entries per tile: the per-model tiles stay in L1, so each inner loop vectorizes


@njit(inline="always")
def _sparse_tile(xs, base, i, start, m, is_delta, rule, thr, cutoff, lo, lo_cutoff, density, key, scale, scale_mode,
                 s_row):
    """s_row[:m] = model i's sparsified, rescaled task vector on entries start..start+m (one loop per
    rule, so each is a simple vectorizable loop); returns how many task-vector entries are not finite.

    KEEP_TOP keeps |delta| bits above ``thr``, and those equal to it below index ``cutoff``; KEEP_BAND
    keeps the lowest entries that rule (``bits < thr``, or equal below ``cutoff``) would select, minus
    the lowest the same rule with ``lo``/``lo_cutoff`` selects: exact counts at tied magnitudes."""
    x = xs[i]
    zero = np.float32(0.0)
    bad = 0
    for jj in range(m):
        d = _delta(x, base, start + jj, is_delta)
        if (d - d) != zero:  # NaN or Inf
            bad += 1
        s_row[jj] = d
    if rule == KEEP_TOP:
        for jj in range(m):
            bits = _f32_bits(abs(s_row[jj]))
            if not (bits > thr or (bits == thr and start + jj < cutoff)):
                s_row[jj] = zero
    elif rule == KEEP_RANDOM:
        for jj in range(m):
            if not _uniform(key, start + jj) < density:
                s_row[jj] = zero
    elif rule == KEEP_BAND:
        for jj in range(m):
            bits = _f32_bits(abs(s_row[jj]))
            j = start + jj
            in_high = bits < thr or (bits == thr and j < cutoff)
            in_low = bits < lo or (bits == lo and j < lo_cutoff)
            if not (in_high and not in_low):
                s_row[jj] = zero
    if scale_mode == SCALE_MUL and scale != np.float32(1.0):
        for jj in range(m):
            s_row[jj] = s_row[jj] * scale
    elif scale_mode == SCALE_DIV and scale != np.float32(1.0):
        for jj in range(m):
            s_row[jj] = s_row[jj] / scale
    return bad


@njit(inline="always")
def _pairwise_sum(values, m):
    """Sum of values[:m] (float64) by halving: each level is one vectorizable loop, and the order is
    fixed, so the result does not depend on the thread count. Overwrites ``values``."""
    while m > 1:
        half = m // 2
        for jj in range(half):
            values[jj] += values[m - half + jj]
        m -= half
    return values[0] if m == 1 else 0.0


@njit(cache=True, parallel=True, nogil=True)
def _abs_sums(xs, base, i, is_delta, rule, thr, cutoff, lo, lo_cutoff, density, key):
    """Per block: sum |delta| and sum |kept delta| in float64 (the L1 rescale's norms), by tiles."""
    n = xs[0].shape[0]
    n_blocks = (n + BLOCK - 1) // BLOCK
    sums = np.zeros((n_blocks, 2), np.float64)
    x = xs[i]
    for b in prange(n_blocks):
        kept = np.empty(_TILE, np.float32)
        a_all = np.empty(_TILE, np.float64)
        a_kept = np.empty(_TILE, np.float64)
        before, after = 0.0, 0.0
        for start in range(b * BLOCK, min(n, (b + 1) * BLOCK), _TILE):
            m = min(_TILE, n - start)
            _sparse_tile(xs, base, i, start, m, is_delta, rule, thr, cutoff, lo, lo_cutoff, density, key,
                         np.float32(1.0), SCALE_NONE, kept)
            for jj in range(m):
                a_all[jj] = abs(np.float64(_delta(x, base, start + jj, is_delta)))
                a_kept[jj] = abs(np.float64(kept[jj]))
            before += _pairwise_sum(a_all, m)
            after += _pairwise_sum(a_kept, m)
        sums[b, 0], sums[b, 1] = before, after
    return sums


@njit(inline="always")
def _mix(total, pos, neg, div_pos, div_neg, consensus, normalize, total_w, lam):
    """One position's combination of its weighted task-vector entries, from their sum, the sums of
    their positive and negative parts, and the weights of the models on either side."""
    zero, one = np.float32(0.0), np.float32(1.0)
    if consensus == 0:
        mixed = total
        if normalize:
            mixed = mixed / total_w
    else:
        elected_positive = (pos + neg) >= zero
        mixed = pos if elected_positive else neg
        if normalize:  # the disjoint mean: divide by the agreeing models' weights
            divisor = div_pos if elected_positive else div_neg
            mixed = mixed / (divisor if divisor != zero else one)
    if lam != one:
        mixed = mixed * lam
    return mixed


@njit(cache=True, parallel=True, nogil=True)
def _combine(xs, base, is_delta, rule, thr, cutoff, lo, lo_cutoff, density, key, scale, scale_mode, w,
             consensus, normalize, total_w, lam, add_base, out):
    """base + lam * combine_i(w_i * sparsify_i(delta_i)) per entry, in the reference's float32 order.

    ``consensus`` 0: plain sum (divided by ``total_w`` when ``normalize``); 1: TIES sign election and,
    when ``normalize``, the disjoint mean. Returns counts: kept entries, positions with >= 2 kept
    entries, those whose signs conflict, non-finite task-vector entries and non-finite results.
    """
    n_models, n = len(xs), xs[0].shape[0]
    n_blocks = (n + BLOCK - 1) // BLOCK
    counts = np.zeros((n_blocks, 5), np.int64)
    zero = np.float32(0.0)
    for b in prange(n_blocks):
        sparse = np.empty((n_models, _TILE), np.float32)
        tot = np.empty(_TILE, np.float32)
        pos = np.empty(_TILE, np.float32)
        neg = np.empty(_TILE, np.float32)
        div_pos = np.empty(_TILE, np.float32)
        div_neg = np.empty(_TILE, np.float32)
        n_pos = np.empty(_TILE, np.int32)
        n_neg = np.empty(_TILE, np.int32)
        kept, contested, conflicts, bad_in, bad = 0, 0, 0, 0, 0
        for start in range(b * BLOCK, min(n, (b + 1) * BLOCK), _TILE):
            m = min(_TILE, n - start)
            for i in range(n_models):
                bad_in += _sparse_tile(xs, base, i, start, m, is_delta, rule[i], thr[i], cutoff[i], lo[i],
                                       lo_cutoff[i], density[i], key[i], scale[i], scale_mode, sparse[i])
            if n_models == 2:  # the common case, in registers (no accumulator arrays)
                s0_row, s1_row = sparse[0], sparse[1]
                w0, w1 = w[0], w[1]
                for jj in range(m):
                    s0, s1 = s0_row[jj], s1_row[jj]
                    t0, t1 = s0 * w0, s1 * w1
                    mixed = _mix((zero + t0) + t1, (zero + max(t0, zero)) + max(t1, zero),
                                 (zero + min(t0, zero)) + min(t1, zero),
                                 (zero + (w0 if t0 > zero else zero)) + (w1 if t1 > zero else zero),
                                 (zero + (w0 if t0 < zero else zero)) + (w1 if t1 < zero else zero),
                                 consensus, normalize, total_w, lam)
                    if add_base:
                        mixed = mixed + base[start + jj]
                    out[start + jj] = mixed
                    bad += 1 if (mixed - mixed) != zero else 0
                    n_p = (1 if s0 > zero else 0) + (1 if s1 > zero else 0)
                    n_n = (1 if s0 < zero else 0) + (1 if s1 < zero else 0)
                    kept += n_p + n_n
                    contested += 1 if n_p + n_n == 2 else 0
                    conflicts += 1 if n_p == 1 and n_n == 1 else 0
                continue
            tot[:m] = zero
            pos[:m] = zero
            neg[:m] = zero
            div_pos[:m] = zero
            div_neg[:m] = zero
            n_pos[:m] = 0
            n_neg[:m] = 0
            for i in range(n_models):
                wi = w[i]
                for jj in range(m):
                    s = sparse[i, jj]
                    t = s * wi
                    tot[jj] += t
                    pos[jj] += max(t, zero)
                    neg[jj] += min(t, zero)
                    div_pos[jj] += wi if t > zero else zero
                    div_neg[jj] += wi if t < zero else zero
                    n_pos[jj] += 1 if s > zero else 0
                    n_neg[jj] += 1 if s < zero else 0
            for jj in range(m):
                mixed = _mix(tot[jj], pos[jj], neg[jj], div_pos[jj], div_neg[jj], consensus, normalize, total_w, lam)
                if add_base:
                    mixed = mixed + base[start + jj]
                out[start + jj] = mixed
                if (mixed - mixed) != zero:
                    bad += 1
                nonzero = n_pos[jj] + n_neg[jj]
                kept += nonzero
                if nonzero >= 2:
                    contested += 1
                    if n_pos[jj] > 0 and n_neg[jj] > 0:
                        conflicts += 1
        counts[b, 0], counts[b, 1], counts[b, 2], counts[b, 3], counts[b, 4] = kept, contested, conflicts, bad_in, bad
    return counts.sum(axis=0)




def combine(xs, base, is_delta, rule, thr, cutoff, lo, lo_cutoff, density, key, scale, scale_mode, w,
            consensus, normalize, total_w, lam, add_base, out) -> np.ndarray:
    """Typed entry point of ``_combine`` (see there)."""
    return _combine(xs, base, bool(is_delta), np.asarray(rule, np.int64), np.asarray(thr, np.int32),
                    np.asarray(cutoff, np.int64), np.asarray(lo, np.int32), np.asarray(lo_cutoff, np.int64),
                    np.asarray(density, np.float32),
                    np.asarray(key, np.uint64), np.asarray(scale, np.float32), int(scale_mode),
                    np.asarray(w, np.float32), int(consensus), bool(normalize), np.float32(total_w), np.float32(lam),
                    bool(add_base), out)




@njit(cache=True, parallel=True, nogil=True)
def _to_bfloat16_bits(src, dst):
    for b in prange((src.shape[0] + BLOCK - 1) // BLOCK):
        for j in range(b * BLOCK, min(src.shape[0], (b + 1) * BLOCK)):
            x = src[j]
            u = np.uint32(_f32_bits(x))
            rounded = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
            dst[j] = np.uint16(0x7FC0) if x != x else np.uint16(rounded)


def to_bfloat16_bits(src: np.ndarray, dst: np.ndarray) -> None:
    """dst (uint16) = the bfloat16 bits of the float32 ``src``: round to nearest, ties to even, as torch's
    ``.to(torch.bfloat16)`` (bit for bit, except that any NaN becomes the quiet NaN 0x7FC0)."""
    _to_bfloat16_bits(src, dst)


@njit(cache=True, parallel=True, nogil=True)
def _weighted_sum(xs, coefs, out):
    n = xs[0].shape[0]
    for b in prange((n + BLOCK - 1) // BLOCK):
        lo, hi = b * BLOCK, min(n, (b + 1) * BLOCK)
        x, c = xs[0], coefs[0]
        for j in range(lo, hi):
            out[j] = x[j] * c
        for i in range(1, len(xs)):
            x, c = xs[i], coefs[i]
            for j in range(lo, hi):
                out[j] = _fma(x[j], c, out[j])


def weighted_sum(xs, coefs, out: np.ndarray) -> np.ndarray:
    """out = x_0 c_0, then out = fma(x_i, c_i, out) for each further model (float32 coefficients): the
    same roundings as ``kernels.linear_average`` (a multiply, then torch's fused ``add_(alpha=c)``)."""
    _weighted_sum(tuple(xs), np.asarray(coefs, np.float32), out)
    return out
