"""What every fused kernel shares: the fixed work block, the rule and rescale codes, bit casts and
fma as LLVM intrinsics, one entry of a task vector."""

from __future__ import annotations

from llvmlite import ir
from numba import njit
from numba.core import types
from numba.extending import intrinsic

BLOCK = 1 << 16  # entries per work block: fixed, so float64 partial sums do not depend on the thread count
_HI_BITS, _LO_BITS = 16, 15  # |x| of a float32 has 31 significant bits: 16 + 15 for the two radix passes

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
def _delta(x, base, j, is_delta):
    """Entry j of a task vector: ``x`` itself, or ``x - base`` (``x`` is one model's array, taken out
    of the tuple before the loop: indexing a tuple inside a loop keeps it from vectorizing)."""
    return x[j] if is_delta else x[j] - base[j]
