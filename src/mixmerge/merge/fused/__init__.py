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

The kernels live by concern: ``primitives`` (block size, rule and rescale codes, intrinsics), ``rng``
(the counter-based draws), ``select`` (magnitude thresholds), ``della`` (MagPrune), ``combine`` (the
one-pass combination, linear's weighted sum, the bfloat16 cast); this package re-exports their API.
"""


from mixmerge.merge.fused.combine import combine, l1_factor, to_bfloat16_bits, weighted_sum
from mixmerge.merge.fused.della import (
    SORT,
    SORT_AND_STORE,
    USE_STORED,
    bucket_layout,
    della_sparsify,
    rank_dtype,
)
from mixmerge.merge.fused.primitives import (
    BLOCK,
    KEEP_ALL,
    KEEP_BAND,
    KEEP_RANDOM,
    KEEP_TOP,
    SCALE_DIV,
    SCALE_MUL,
    SCALE_NONE,
)
from mixmerge.merge.fused.rng import _uniform
from mixmerge.merge.fused.select import bits_to_float, kth_largest_bits, lowest_rule, top_k_rule

__all__ = ["BLOCK", "KEEP_ALL", "KEEP_BAND", "KEEP_RANDOM", "KEEP_TOP", "SCALE_DIV", "SCALE_MUL", "SCALE_NONE",
           "SORT", "SORT_AND_STORE", "USE_STORED", "_uniform", "bits_to_float", "bucket_layout", "combine",
           "della_sparsify", "kth_largest_bits", "l1_factor", "lowest_rule", "rank_dtype", "to_bfloat16_bits", "top_k_rule",
           "weighted_sum"]
