"""Pure statistics of weight deltas: L2 norms, Pearson r, cosine and sign conflicts between task vectors.

Shared by the analysis (``analysis/stream.py`` streams whole models through the accumulators) and the
correlation-aware merge (``correlation_merge.py`` measures each tensor with them before merging it).

A task vector is ``tuned - base`` for one model. Everything here takes tensors and returns floats; no
files, no config. The streaming accumulators let a whole layer (or a whole model) be summarised from
chunks that arrive one at a time, so no layer is ever concatenated in memory. They combine per-chunk
centred moments (Chan et al.'s parallel update) in float64, which gives the same numbers as the direct
formula without the cancellation that raw sums of x² suffer when the mean is large.

Undefined statistics (Pearson r of a constant vector, cosine with a zero vector, a sign-conflict rate
with no position where both deltas move) are returned as ``nan``, never as a made-up 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "NormAccumulator",
    "PairAccumulator",
    "cosine",
    "delta_l2",
    "l2",
    "pearson",
    "sign_conflict_rate",
]


def _flat64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1).to(torch.float64)


def _check_same_shape(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"tensors differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")


def l2(t: torch.Tensor) -> float:
    """Euclidean norm of all entries, accumulated in float64."""
    return float(torch.linalg.vector_norm(_flat64(t)))


def delta_l2(base: torch.Tensor, tuned: torch.Tensor) -> float:
    """L2 norm of the weight delta ``tuned - base`` (the paper's Figure 2 quantity), in float64."""
    _check_same_shape(base, tuned)
    return l2(_flat64(tuned) - _flat64(base))


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of the entries of two task vectors (paper's Figure 3); nan if one is constant."""
    _check_same_shape(a, b)
    acc = PairAccumulator()
    acc.update(a, b)
    return acc.pearson


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two task vectors (uncentred Pearson); nan if one of them is all zeros."""
    _check_same_shape(a, b)
    x, y = _flat64(a), _flat64(b)
    denom = float(torch.linalg.vector_norm(x)) * float(torch.linalg.vector_norm(y))
    return float(x @ y) / denom if denom > 0 else math.nan


def sign_conflict_rate(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of positions with opposite signs, among positions where *both* deltas are non-zero.

    ``#{i : a_i * b_i < 0} / #{i : a_i != 0 and b_i != 0}``. Positions where either task left a weight
    untouched cannot conflict and are excluded from the denominator (that is what TIES' sign election has
    to resolve). Independent symmetric deltas give 0.5; identical ones give 0; nan if no position has
    both deltas non-zero.
    """
    _check_same_shape(a, b)
    acc = PairAccumulator()
    acc.update(a, b)
    return acc.sign_conflict_rate


@dataclass
class NormAccumulator:
    """Sum of squares of a delta streamed in chunks; ``l2`` is its square root."""

    sum_sq: float = 0.0
    numel: int = 0

    def update(self, delta: torch.Tensor) -> None:
        x = _flat64(delta)
        self.sum_sq += float(x @ x)
        self.numel += x.numel()

    def merge(self, other: NormAccumulator) -> None:
        self.sum_sq += other.sum_sq
        self.numel += other.numel

    @property
    def l2(self) -> float:
        return math.sqrt(self.sum_sq)

    @property
    def rms(self) -> float:
        """Root-mean-square entry: the L2 normalised by size, comparable across layers of different width."""
        return math.sqrt(self.sum_sq / self.numel) if self.numel else math.nan


@dataclass
class PairAccumulator:
    """Streaming moments of two aligned vectors x, y (two task vectors at the same positions).

    Holds n, the means, the centred second moments (M2x, M2y, Cxy), the raw dot products (for cosine)
    and the sign counts. ``update`` adds a chunk; ``merge`` adds another accumulator (layer → model).
    """

    n: int = 0
    mean_x: float = 0.0
    mean_y: float = 0.0
    m2_x: float = 0.0  # sum (x - mean_x)^2
    m2_y: float = 0.0
    c_xy: float = 0.0  # sum (x - mean_x)(y - mean_y)
    dot_xy: float = 0.0  # sum x*y
    dot_xx: float = 0.0
    dot_yy: float = 0.0
    both_nonzero: int = 0
    conflicts: int = 0

    def update(self, a: torch.Tensor, b: torch.Tensor) -> None:
        _check_same_shape(a, b)
        x, y = _flat64(a), _flat64(b)
        n = x.numel()
        if n == 0:
            return
        mx, my = float(x.mean()), float(y.mean())
        dx, dy = x - mx, y - my
        m2_x, m2_y, c_xy = float(dx @ dx), float(dy @ dy), float(dx @ dy)
        del dx, dy
        prod = x * y  # its sign is the sign agreement; it is 0 where either delta is 0
        chunk = PairAccumulator(
            n=n,
            mean_x=mx,
            mean_y=my,
            m2_x=m2_x,
            m2_y=m2_y,
            c_xy=c_xy,
            # raw moments from the centred ones: sum x*y = Cxy + n*mx*my (no extra pass over the data)
            dot_xy=c_xy + n * mx * my,
            dot_xx=m2_x + n * mx * mx,
            dot_yy=m2_y + n * my * my,
            both_nonzero=int(torch.count_nonzero(prod)),
            conflicts=int((prod < 0).sum()),
        )
        self.merge(chunk)

    def merge(self, other: PairAccumulator) -> None:
        if other.n == 0:
            return
        if self.n == 0:
            self.__dict__.update(other.__dict__)
            return
        n = self.n + other.n
        ddx, ddy = other.mean_x - self.mean_x, other.mean_y - self.mean_y
        w = self.n * other.n / n
        self.m2_x += other.m2_x + ddx * ddx * w
        self.m2_y += other.m2_y + ddy * ddy * w
        self.c_xy += other.c_xy + ddx * ddy * w
        self.mean_x += ddx * other.n / n
        self.mean_y += ddy * other.n / n
        self.n = n
        self.dot_xy += other.dot_xy
        self.dot_xx += other.dot_xx
        self.dot_yy += other.dot_yy
        self.both_nonzero += other.both_nonzero
        self.conflicts += other.conflicts

    @property
    def pearson(self) -> float:
        denom = math.sqrt(self.m2_x * self.m2_y)
        return max(-1.0, min(1.0, self.c_xy / denom)) if denom > 0 else math.nan

    @property
    def cosine(self) -> float:
        denom = math.sqrt(self.dot_xx * self.dot_yy)
        return max(-1.0, min(1.0, self.dot_xy / denom)) if denom > 0 else math.nan

    @property
    def sign_conflict_rate(self) -> float:
        return self.conflicts / self.both_nonzero if self.both_nonzero else math.nan

    @property
    def l2_x(self) -> float:
        return math.sqrt(self.dot_xx)

    @property
    def l2_y(self) -> float:
        return math.sqrt(self.dot_yy)
