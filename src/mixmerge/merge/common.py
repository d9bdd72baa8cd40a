"""What the torch reference (``kernels.py``) and the fused CPU kernels (``fused/``) share, free of torch:
the standalone merge on a CPU never imports torch (about 1 s of a 3 s command)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

RESCALE_MODES = ("l1", "inverse_prob")


def tensor_key(seed: int, tensor_name: str, model_index: int) -> int:
    """A 64-bit key that depends only on (seed, tensor name, model index): random masks drawn from it
    do not change with thread count, device, or the order tensors are merged in."""
    digest = hashlib.sha256(f"{seed}\x00{tensor_name}\x00{model_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def weight_divisor(weights, normalize: bool) -> float:
    """What a weighted average divides by: the weights' sum when normalizing, unless it is about 0 (then
    the weighted sum is kept as is, as mergekit does)."""
    total = float(sum(weights))
    return total if normalize and abs(total) >= 1e-8 else 1.0


@dataclass(frozen=True)
class KernelStats:
    """Diagnostics for one tensor: the fraction of delta entries kept after sparsification (mean over
    models) and the fraction of positions with >= 2 non-zero deltas whose signs disagree."""

    kept_fraction: float
    sign_conflict_rate: float

    def details(self) -> dict:
        """A method's own per-tensor report beyond these two (merge=correlation's decision); none here."""
        return {}
