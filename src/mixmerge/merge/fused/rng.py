"""The counter-based random draws of the fused kernels: an entry's draw depends only on its tensor's key
and its index (``kernels.counter_uniform`` is the torch twin)."""

from __future__ import annotations

import numpy as np
from numba import njit

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


@njit(inline="always")
def _uniform(key, index):
    """splitmix64(key + (index + 1) * golden) -> a float32 in [0, 1) with 24 random bits."""
    z = np.uint64(key) + (np.uint64(index) + np.uint64(1)) * _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z = z ^ (z >> np.uint64(31))
    return np.float32(z >> np.uint64(40)) * np.float32(5.9604644775390625e-08)  # 2**-24
