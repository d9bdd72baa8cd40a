"""Fused CPU kernels for the task-vector methods and linear: one pass per step instead of one pass per
operation.

``kernels.py`` states the math one readable torch operation at a time; on a CPU that costs a memory
pass per operation (about 25 passes over every tensor for TIES). These numba kernels compute the same
numbers (tested equal to the reference: bit for bit, or within 1e-6 where the reference sums in
float64) in a few passes, in parallel over fixed blocks:

- the magnitude threshold is an exact radix selection on the float bits of |delta| (two histogram
  passes), instead of a sort or ``kthvalue``;
- sparsify, sign election, disjoint mean, lambda and the base are one pass, which also counts the
  report's kept fraction and sign conflicts;
- DELLA decides keep/drop from per-row rank *bands* (a histogram of |delta| buckets) and ranks exactly
  only the few entries whose band straddles their draw's threshold; its 1/p rescale, which needs every
  survivor's rank, sorts each row (a stable radix sort).

Measured on the default model (SmolLM2-135M, two specialists, 2 cores), the streamed merge with the
torch kernels took 9.6 s for TIES and 16.6 s for DELLA; with these, about 1.4 s and 2.0 s (see
``benchmarks/merge_vs_mergekit.py``). Hand-written because no library offers a fused TIES/DELLA on a
CPU; numba keeps it in Python.

Random masks come from a counter-based hash (splitmix64 of the tensor's key and the entry's index), so
an entry's draw depends only on (seed, tensor name, model, index): the same on any thread count, in
any order, and on any device (``counter_uniform`` is the torch version used on GPUs).
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange
from numba.core import types
from numba.extending import intrinsic

BLOCK = 1 << 16  # entries per work block: fixed, so float64 partial sums do not depend on the thread count
_HI_BITS, _LO_BITS = 16, 15  # |x| of a float32 has 31 significant bits: 16 + 15 for the two radix passes
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)

# Sparsifier rules per model (the ``rule`` array).
KEEP_ALL, KEEP_TOP, KEEP_RANDOM, KEEP_BAND = 0, 1, 2, 3
# Rescale modes (the ``scale_mode`` argument).
SCALE_NONE, SCALE_MUL, SCALE_DIV = 0, 1, 2


@intrinsic
def _f32_bits(typingctx, x):
    """The IEEE-754 bits of a float32 as an int32 (a bit cast, no conversion)."""
    sig = types.int32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c rounded once (llvm.fma), as torch's vectorized ``add_(x, alpha=w)``."""
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return sig, codegen


@njit(inline="always")
def _uniform(key, index):
    """splitmix64(key + (index + 1) * golden) -> a float32 in [0, 1) with 24 random bits."""
    z = np.uint64(key) + (np.uint64(index) + np.uint64(1)) * _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z = z ^ (z >> np.uint64(31))
    return np.float32(z >> np.uint64(40)) * np.float32(5.9604644775390625e-08)  # 2**-24


@njit(inline="always")
def _delta(x, base, j, is_delta):
    """Entry j of a task vector: ``x`` itself, or ``x - base`` (``x`` is one model's array, taken out
    of the tuple before the loop: indexing a tuple inside a loop keeps it from vectorizing)."""
    return x[j] if is_delta else x[j] - base[j]


@njit(cache=True, parallel=True, nogil=True)
def _radix_histogram(xs, base, i, is_delta, prefix, shift, width, n_parts):
    """Counts of ``(bits(|delta|) >> shift) & (2**width - 1)`` over entries whose higher bits equal
    ``prefix`` (``prefix < 0``: all entries), one histogram per part (integer counts: the total does
    not depend on how the entries are split)."""
    n = xs[0].shape[0]
    hist = np.zeros((n_parts, 1 << width), np.int32)  # int32: a part holds fewer than 2**31 entries
    mask = (1 << width) - 1
    step = (n + n_parts - 1) // n_parts
    x = xs[i]
    for p in prange(n_parts):
        for j in range(p * step, min(n, (p + 1) * step)):
            bits = _f32_bits(abs(_delta(x, base, j, is_delta)))
            if prefix < 0 or (bits >> (shift + width)) == prefix:
                hist[p, (bits >> shift) & mask] += 1
    return hist


@njit(cache=True, nogil=True)
def _nth_tied_index(xs, base, i, is_delta, thr, nth):
    """Index just past the ``nth`` (1-based) entry whose |delta| bits equal ``thr``."""
    x = xs[i]
    seen = 0
    for j in range(xs[0].shape[0]):
        if _f32_bits(abs(_delta(x, base, j, is_delta))) == thr:
            seen += 1
            if seen == nth:
                return j + 1
    return xs[0].shape[0]


@njit(cache=True, nogil=True)
def _top_down(hist_parts, k):
    """The bin holding the k-th largest entry, how many entries lie in higher bins, and the bin's
    count, from per-part histograms (summed here)."""
    n_parts, n_bins = hist_parts.shape
    above = 0
    for b in range(n_bins - 1, -1, -1):
        count = 0
        for p in range(n_parts):
            count += hist_parts[p, b]
        if above + count >= k:
            return b, above, count
        above += count
    return 0, above, 0


_SMALL = 4096  # up to this many entries, a sort of the bits is cheaper than two 2**16-bin histograms


@njit(cache=True, nogil=True)
def _select_kth(xs, base, i, is_delta, k, n_parts):
    n = xs[0].shape[0]
    if n <= _SMALL:
        x = xs[i]
        bits = np.empty(n, np.int32)
        for j in range(n):
            bits[j] = _f32_bits(abs(_delta(x, base, j, is_delta)))
        bits.sort()
        thr = bits[n - k]
        above, tied = 0, 0
        for j in range(n):
            if bits[j] > thr:
                above += 1
            elif bits[j] == thr:
                tied += 1
        return thr, above, tied
    hi = _radix_histogram(xs, base, i, is_delta, -1, _LO_BITS, _HI_BITS, n_parts)
    hi_bin, above, _ = _top_down(hi, k)
    lo = _radix_histogram(xs, base, i, is_delta, hi_bin, 0, _LO_BITS, n_parts)
    lo_bin, above_lo, tied = _top_down(lo, k - above)
    return np.int32((hi_bin << _LO_BITS) | lo_bin), above + above_lo, tied


def kth_largest_bits(xs: np.ndarray, base: np.ndarray, i: int, is_delta: bool, k: int) -> tuple[int, int, int]:
    """Exact selection of the k-th largest |delta_i| (1 <= k <= n): its float bits, how many entries
    are larger, and how many equal it. Two radix passes (16 then 15 bits), O(n), no sort (small
    tensors: a sort of their bits)."""
    n = xs[0].shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k={k} is outside [1, {n}]")
    n_parts = max(1, min(numba.get_num_threads(), n // BLOCK))
    thr, above, tied = _select_kth(xs, base, i, is_delta, k, n_parts)
    return int(thr), int(above), int(tied)


def top_k_rule(xs: np.ndarray, base: np.ndarray, i: int, is_delta: bool, k: int) -> tuple[int, int]:
    """(threshold bits, cutoff index) such that keeping entries with bits > threshold, or == threshold
    and index < cutoff, keeps exactly the k largest |delta| (ties: lowest indices, as a stable sort)."""
    n = xs[0].shape[0]
    thr, above, tied = kth_largest_bits(xs, base, i, is_delta, k)
    need = k - above
    cutoff = n if need == tied else _nth_tied_index(xs, base, i, is_delta, thr, need)
    return thr, cutoff


def bits_to_float(bits: int) -> float:
    return float(np.array([bits], np.int32).view(np.float32)[0])


def l1_factor(xs, base, i, is_delta, rule, thr, cutoff, lo, density, key) -> float:
    """sum |delta| / sum |kept| (1 when either is ~0), summed in a fixed block order."""
    sums = _abs_sums(xs, base, i, is_delta, rule, thr, cutoff, lo, np.float32(density), np.uint64(key))
    before, after = float(sums[:, 0].sum()), float(sums[:, 1].sum())
    return 1.0 if before < 1e-7 or after < 1e-7 else before / after


_TILE = 1024  # entries per tile: the per-model tiles stay in L1, so each inner loop vectorizes


@njit(inline="always")
def _sparse_tile(xs, base, i, start, m, is_delta, rule, thr, cutoff, lo, density, key, scale, scale_mode, s_row):
    """s_row[:m] = model i's sparsified, rescaled task vector on entries start..start+m (one loop per
    rule, so each is a simple vectorizable loop); returns how many task-vector entries are not finite."""
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
            if not (lo <= bits <= thr):
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
def _abs_sums(xs, base, i, is_delta, rule, thr, cutoff, lo, density, key):
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
            _sparse_tile(xs, base, i, start, m, is_delta, rule, thr, cutoff, lo, density, key,
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
def _combine(xs, base, is_delta, rule, thr, cutoff, lo, density, key, scale, scale_mode, w,
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
                                       density[i], key[i], scale[i], scale_mode, sparse[i])
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


@njit(inline="always")
def _radix_pass(src_k, src_i, dst_k, dst_i, hist, m, shift):
    """One stable counting-sort pass on 8 bits of the keys; False when every key has the same digit
    (the pass would not move anything)."""
    hist[:] = 0
    for c in range(m):
        hist[(src_k[c] >> shift) & 255] += 1
    for h in range(256):
        if hist[h] == m:
            return False
    total = 0
    for h in range(256):
        count = hist[h]
        hist[h] = total
        total += count
    for c in range(m):
        digit = (src_k[c] >> shift) & 255
        dst_k[hist[digit]] = src_k[c]
        dst_i[hist[digit]] = src_i[c]
        hist[digit] += 1
    return True


@njit(inline="always")
def _radix_sort(src_k, src_i, dst_k, dst_i, hist, m, shifts):
    """LSD radix sort over the given byte shifts; returns the (keys, positions) arrays holding the result."""
    for shift in shifts:
        if _radix_pass(src_k, src_i, dst_k, dst_i, hist, m, np.uint32(shift)):
            src_k, src_i, dst_k, dst_i = dst_k, dst_i, src_k, src_i
    return src_k, src_i


@njit(inline="always")
def _rank_order(values, k_a, i_a, k_b, i_b, hist, m):
    """Positions of ``values`` in ascending |value| order, ties by position (a stable sort of the float
    bits). Three radix passes on the top 24 bits and an insertion pass for the lowest byte, which only
    reorders keys equal in their top 24 bits (rare: 20 % faster than a fourth pass); if that pass
    would move more than 4 m entries, the row gets the full four-pass radix sort instead."""
    for c in range(m):
        k_a[c] = np.uint32(_f32_bits(abs(values[c])))
        i_a[c] = c
    keys, order = _radix_sort(k_a, i_a, k_b, i_b, hist, m, (8, 16, 24))
    budget = 4 * m
    for c in range(1, m):
        k = keys[c]
        if keys[c - 1] > k:
            idx = order[c]
            pos = c
            while pos > 0 and keys[pos - 1] > k:
                keys[pos] = keys[pos - 1]
                order[pos] = order[pos - 1]
                pos -= 1
            keys[pos] = k
            order[pos] = idx
            budget -= c - pos
            if budget < 0:
                for j in range(m):
                    k_a[j] = np.uint32(_f32_bits(abs(values[j])))
                    i_a[j] = j
                return _radix_sort(k_a, i_a, k_b, i_b, hist, m, (0, 8, 16, 24))[1]
    return order


# DELLA's keep decision without a full ranking (``_keep_by_bucket``): |delta| bits are bucketed per row,
# bucket 0 for exact zeros, bucket 1 for entries about 15 octaves or more below the row's largest, the
# others 1/16 octave each (finer for rows longer than 1024, so that buckets stay small), monotone in
# |delta|: a bucket's entries hold a known band of ranks.
_SCAN_ROW_UP_TO = 8  # up to this many undecided entries: ranked by scans of the whole row (vectorized)
_MIXED, _UNIFORM, _UNKNOWN = 0, 1, 2  # a bucket's keys: mixed, all equal, not looked at yet


@njit(inline="always")
def _precedes(kj, j, kc, c):
    """1 if entry j (key kj) comes before entry c (key kc) in the stable ascending order, else 0."""
    return 1 if (kj < kc) | ((kj == kc) & (j < c)) else 0


@njit(inline="always")
def _survivor(d, u, p, inverse_prob):
    """A DELLA entry after its draw ``u`` against its keep probability ``p`` (a select: u is random)."""
    kept = d / p if inverse_prob else d
    return kept if u < p else np.float32(0.0)


def bucket_layout(n_cols: int) -> tuple[int, int]:
    """(bits shifted off |delta|'s float bits, number of buckets) for rows of ``n_cols`` entries: 16
    buckets per octave up to 1024 columns, twice as many per doubling beyond (at most 256 per octave)."""
    finer = min(4, max(0, (n_cols - 1).bit_length() - 10))
    return 19 - finer, 256 << finer


@njit(inline="always")
def _keep_by_bucket(d_row, u_row, k_row, b_row, t_row, flag, members, rank_row, start_of, fill, state, p_lo,
                    p_hi, keep_prob, shift, n_buckets, out, start, m):
    """out[start:start+m] = the row's survivors (``d`` where ``u < keep_prob[rank]``, else 0) from rank
    *bands*: a bucket's entries have ranks in [start_b, end_b), and keep_prob is non-decreasing, so
    ``u < keep_prob[start_b]`` keeps and ``u >= keep_prob[end_b - 1]`` drops. Only the entries between
    (about 2 eps x their bucket's share of the row) need their exact stable rank: counted over the row
    when they are few, else over their bucket, or read off the bucket list when all its keys are equal
    (zeros, quantized deltas). Returns False when those counts would cost more than a sort; the caller
    then ranks the row fully (``out`` is overwritten).

    The loops are split so that each stays simple enough to vectorize (a gather and a select in one
    loop became a branch: 3x slower)."""
    zero = np.float32(0.0)
    kmax = np.int32(0)
    for c in range(m):
        k = _f32_bits(abs(d_row[c]))
        k_row[c] = k
        kmax = max(kmax, k)
    top = np.int32(n_buckets - 1)
    for c in range(m):
        k = k_row[c]
        b_row[c] = np.int32(0) if k == 0 else top - min((kmax - k) >> shift, top - np.int32(1))
    start_of[: n_buckets + 1] = 0
    for c in range(m):
        start_of[b_row[c] + 1] += 1
    total = 0
    for b in range(n_buckets):  # start_of[b]: the first rank of bucket b
        count = start_of[b + 1]
        start_of[b + 1] = total + count
        p_lo[b] = keep_prob[min(total, m - 1)]
        p_hi[b] = keep_prob[max(total + count - 1, 0)]
        total += count
    for c in range(m):
        t_row[c] = p_lo[b_row[c]]
    for c in range(m):
        out[start + c] = d_row[c] if u_row[c] < t_row[c] else zero
        flag[c] = np.int32(u_row[c] >= t_row[c])
    for c in range(m):
        t_row[c] = p_hi[b_row[c]]
    for c in range(m):
        flag[c] = flag[c] & np.int32(u_row[c] < t_row[c])
    n_open = 0
    for c in range(m):
        if flag[c]:
            flag[n_open] = c
            n_open += 1
    if n_open <= _SCAN_ROW_UP_TO:
        for a in range(n_open):
            c = flag[a]
            kc = k_row[c]
            rank = 0
            for j in range(m):
                rank += _precedes(k_row[j], j, kc, c)
            if u_row[c] < keep_prob[rank]:
                out[start + c] = d_row[c]
        return True
    fill[:n_buckets] = start_of[:n_buckets]
    state[:n_buckets] = _UNKNOWN
    for c in range(m):  # bucket lists (columns ascending within a bucket) and each entry's place in them
        b = b_row[c]
        members[fill[b]] = c
        rank_row[c] = fill[b]
        fill[b] += 1
    budget = 8 * m
    for a in range(n_open):
        c = flag[a]
        b = b_row[c]
        lo, hi = start_of[b], start_of[b + 1]
        if state[b] == _UNKNOWN:
            first = k_row[members[lo]]
            state[b] = _UNIFORM
            for q in range(lo, hi):
                if k_row[members[q]] != first:
                    state[b] = _MIXED
                    break
            budget -= hi - lo
        if state[b] == _UNIFORM:  # all keys equal: the rank is the place in the list (ties by column)
            rank = rank_row[c]
        else:
            kc = k_row[c]
            rank = lo
            for q in range(lo, hi):
                j = members[q]
                rank += _precedes(k_row[j], j, kc, c)
            budget -= hi - lo
        if budget < 0:
            return False
        if u_row[c] < keep_prob[rank]:
            out[start + c] = d_row[c]
    return True


# What _della_sparsify does with ``ranks`` (each entry's stable rank within its row): rank as needed and
# forget, rank every row and store, or read the stored ranks (a sweep re-plans DELLA without ranking).
SORT, SORT_AND_STORE, USE_STORED = 0, 1, 2


@njit(cache=True, parallel=True, nogil=True)
def _della_sparsify(xs, base, i, is_delta, n_rows, low, span, key, inverse_prob, ranks, order_mode, shift, n_buckets,
                    out):
    """MagPrune for model i, row by row: keep entry c with probability ``low + rank_c / (cols - 1) *
    span`` (low = density - eps, span = 2 eps; rank_c: its |delta|'s rank within the row, ties by column,
    as a stable sort), write the survivors (divided by their probability when ``inverse_prob``) to
    ``out``. With stored ``ranks`` that is one gather from the probability table per entry. Otherwise,
    without ``inverse_prob`` only the keep decision needs the rank, and ``_keep_by_bucket`` decides
    almost every entry from rank bands; with it (or when the bands give up on a row, or the ranks are to
    be stored) the row is sorted by ``_rank_order``. The row's deltas and draws are computed first in
    simple loops (they vectorize). Returns per-row float64 sums of |delta| and |survivor|."""
    n = xs[0].shape[0]
    n_cols = n // n_rows
    sums = np.zeros((n_rows, 2), np.float64)
    last = np.float32(max(n_cols - 1, 1))
    x = xs[i]
    n_parts = min(n_rows, 64)
    keep_prob = np.empty(n_cols, np.float32)  # by rank: the same float32 steps as the reference
    for rank in range(n_cols):
        keep_prob[rank] = min(max(low + (np.float32(rank) / last) * span, np.float32(0.0)), np.float32(1.0))
    for part in prange(n_parts):
        k_a = np.empty(n_cols, np.uint32)
        k_b = np.empty(n_cols, np.uint32)
        i_a = np.empty(n_cols, np.int32)
        i_b = np.empty(n_cols, np.int32)
        hist = np.empty(256, np.int64)
        d_row = np.empty(n_cols, np.float32)
        u_row = np.empty(n_cols, np.float32)
        t_row = np.empty(n_cols, np.float32)
        rank_row = np.empty(n_cols, np.int32)
        start_of = np.empty(n_buckets + 1, np.int32)
        fill = np.empty(n_buckets, np.int32)
        state = np.empty(n_buckets, np.int8)
        p_lo = np.empty(n_buckets, np.float32)
        p_hi = np.empty(n_buckets, np.float32)
        k_row = k_a.view(np.int32)
        for r in range(part * n_rows // n_parts, (part + 1) * n_rows // n_parts):
            start = r * n_cols
            for c in range(n_cols):
                d_row[c] = _delta(x, base, start + c, is_delta)
            for c in range(n_cols):
                u_row[c] = _uniform(key, start + c)
            if order_mode == USE_STORED:
                for c in range(n_cols):
                    t_row[c] = keep_prob[ranks[start + c]]
                for c in range(n_cols):
                    out[start + c] = _survivor(d_row[c], u_row[c], t_row[c], inverse_prob)
            elif inverse_prob or order_mode == SORT_AND_STORE or not _keep_by_bucket(
                    d_row, u_row, k_row, i_a, t_row, i_b, k_b.view(np.int32), rank_row, start_of, fill, state, p_lo,
                    p_hi, keep_prob, shift, n_buckets, out, start, n_cols):
                order = _rank_order(d_row, k_a, i_a, k_b, i_b, hist, n_cols)
                if order_mode == SORT_AND_STORE:
                    for rank in range(n_cols):
                        ranks[start + order[rank]] = rank
                for rank in range(n_cols):
                    c = order[rank]
                    out[start + c] = _survivor(d_row[c], u_row[c], keep_prob[rank], inverse_prob)
            before, after = 0.0, 0.0
            for c in range(n_cols):
                before += abs(np.float64(d_row[c]))
                after += abs(np.float64(out[start + c]))
            sums[r, 0], sums[r, 1] = before, after
    return sums


def rank_dtype(n_cols: int):
    """The smallest integer type for ranks within rows of ``n_cols`` entries (stored ranks: 2 bytes an
    entry for rows shorter than 32768)."""
    return np.int16 if n_cols <= np.iinfo(np.int16).max + 1 else np.int32


def della_sparsify(xs, base, i, is_delta, n_rows, density, epsilon, key, inverse_prob, out,
                   ranks: np.ndarray | None = None, order_mode: int = SORT) -> tuple[float, float]:
    """Write model i's MagPrune survivors into ``out``; return (sum |delta|, sum |survivors|).

    ``ranks`` (``rank_dtype``, one entry per element) receives every entry's rank within its row with
    ``SORT_AND_STORE`` and supplies them with ``USE_STORED``."""
    n_cols = xs[0].shape[0] // max(n_rows, 1)
    if ranks is None:  # a placeholder of the stored ranks' type: one compiled kernel serves both callers
        ranks, order_mode = np.empty(1, rank_dtype(n_cols)), SORT
    # density - epsilon and 2 epsilon in double, then rounded once: as the reference's Python scalars
    sums = _della_sparsify(xs, base, i, is_delta, n_rows, np.float32(density - epsilon), np.float32(2 * epsilon),
                           np.uint64(key), inverse_prob, ranks, order_mode, *bucket_layout(n_cols), out)
    return float(sums[:, 0].sum()), float(sums[:, 1].sum())


def combine(xs, base, is_delta, rule, thr, cutoff, lo, density, key, scale, scale_mode, w,
            consensus, normalize, total_w, lam, add_base, out) -> np.ndarray:
    """Typed entry point of ``_combine`` (see there)."""
    return _combine(xs, base, bool(is_delta), np.asarray(rule, np.int64), np.asarray(thr, np.int32),
                    np.asarray(cutoff, np.int64), np.asarray(lo, np.int32), np.asarray(density, np.float32),
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
