"""DELLA's MagPrune: keep/drop from per-row rank bands, exact ranks only where a band straddles the draw's
threshold, a stable radix sort per row for the 1/p rescale; ranks can be stored and reused."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from mixmerge.merge.fused.primitives import _delta, _f32_bits
from mixmerge.merge.fused.rng import _uniform


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
