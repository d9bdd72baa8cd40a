"""Magnitude selection: the exact k-th largest |delta| by radix selection on its float bits (two
histogram passes; a sort of the bits for small tensors), and the keep rule it gives."""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from mixmerge.merge.fused.primitives import _HI_BITS, _LO_BITS, BLOCK, _delta, _f32_bits


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


def lowest_rule(xs: np.ndarray, base: np.ndarray, i: int, is_delta: bool, count: int) -> tuple[int, int]:
    """(threshold bits, cutoff index) such that entries with bits < threshold, or == threshold and index <
    cutoff, are exactly the ``count`` smallest |delta| (ties: lowest indices, as a stable ascending sort).
    ``count`` 0 gives (-1, 0), which selects nothing."""
    n = xs[0].shape[0]
    if count <= 0:
        return -1, 0
    thr, above, tied = kth_largest_bits(xs, base, i, is_delta, n - count + 1)  # the count-th smallest
    need = count - (n - above - tied)
    cutoff = n if need == tied else _nth_tied_index(xs, base, i, is_delta, thr, need)
    return thr, cutoff
