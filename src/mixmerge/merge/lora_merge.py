"""Exact LoRA-native merging (pure torch: no files).

A LoRA adapter i changes module m by ΔW_i = s_i B_i A_i (s_i = lora_alpha / r, or / sqrt(r) with rsLoRA);
a module it does not touch has ΔW_i = 0. Every task-vector method of the registry (and linear with
``normalize``, whose result is base + Σ w_i ΔW_i / Σ w_i) is a function of the task vectors alone, so it
runs here on the ΔW_i themselves: the same numbers as the full-weight merge of the expanded models, with
no base + ΔW − base rounding. peft's ``add_weighted_adapter`` instead trims and elects signs on the A and B
factors separately, which is not TIES/DARE on ΔW (peft issue 3004).

The merged ΔW is written back as a LoRA of rank r by truncated SVD, ΔW ≈ B' A' with
B' = U_r sqrt(S_r), A' = sqrt(S_r) V_r^T: the balanced split gives both factors the same singular values
(‖B'‖ = ‖A'‖ in every norm that depends on them), which keeps bf16/fp16 factors in the same range and is
the minimum-norm factorization that further LoRA training with weight decay tends to; putting S in one
factor only would leave the other orthonormal and the first carrying the whole scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mixmerge.merge import kernels as K
from mixmerge.merge.combine import sparsify_stack
from mixmerge.merge.common import weight_divisor
from mixmerge.merge.params import MergeParams, delta_space_problem


def lora_delta(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """ΔW = scale · B A in float32 (B: out x r, A: r x in), as peft's merge computes it."""
    return (b.float() @ a.float()) * scale


def merge_deltas(tensor_name: str, deltas: Sequence[torch.Tensor], params: MergeParams) -> torch.Tensor:
    """The merged ΔW of one module from each model's ΔW (zeros for a model that does not touch it), by the
    same kernels as the full-weight merge (random masks keyed by the same tensor name, so DARE/DELLA draw
    the same masks). ``params`` are this tensor's (``MergeParams.for_tensor``)."""
    problem = delta_space_problem(params)
    if problem is not None:
        raise ValueError(f"{problem}; merging LoRA adapters on ΔW needs a task-vector method")
    stacked = torch.stack([d.float() for d in deltas])
    if params.method.kind == "linear":
        return K.linear_average(list(stacked), params.weights, params.normalize)
    return K.merge_task_vectors(sparsify_stack(tensor_name, list(stacked), params), params.weights,
                                consensus=params.method.consensus, normalize=params.normalize, lam=params.lam)


def is_elementwise(params: MergeParams) -> bool:
    """Whether the method trims or elects signs entry by entry (then the merged ΔW is no longer a sum of
    low-rank terms, and in general has full rank)."""
    return params.method.sparsify is not None or params.method.consensus is not None


def rank_bound(params: MergeParams, shape: tuple[int, int], input_ranks: Sequence[int]) -> int:
    """A rank at which the merged ΔW is represented exactly: min(out, in) after an entrywise method, else
    min(Σ r_i, out, in)."""
    full = min(shape)
    return full if is_elementwise(params) else min(full, sum(input_ranks))


def linear_coefficients(params: MergeParams) -> list[float]:
    """c_i with merged ΔW = Σ c_i ΔW_i, for the methods that are not entrywise (linear, task arithmetic):
    the factors of the ΔW_i then give the merge's SVD without the dense matrix (``factored_svd``)."""
    if is_elementwise(params):
        raise ValueError(f"merge.method={params.method.name} is not a linear combination of the ΔW")
    divisor = weight_divisor(params.weights, params.normalize)
    lam = 1.0 if params.method.kind == "linear" else params.lam
    return [lam * float(w) / divisor for w in params.weights]


def factored_svd(left: torch.Tensor, right: torch.Tensor):
    """The thin SVD (U, S, V^T) of left @ right (out x R times R x in, R small) in O((out + in) R^2): QR of
    both factors, then the SVD of the R x R core. Float64."""
    q_left, r_left = torch.linalg.qr(left.double())
    q_right, r_right = torch.linalg.qr(right.double().T)
    u, s, vh = torch.linalg.svd(r_left @ r_right.T)
    return q_left @ u, s, vh @ q_right.T


@dataclass(frozen=True)
class Factors:
    """ΔW ≈ B A at a chosen rank, and how far from ΔW that is."""

    b: torch.Tensor  # out x rank
    a: torch.Tensor  # rank x in
    delta_norm: float  # ‖ΔW‖_F
    error_norm: float  # ‖ΔW − B A‖_F, with B and A as stored (after the cast to their dtype)

    @property
    def rank(self) -> int:
        return self.a.shape[0]

    @property
    def relative_error(self) -> float:
        return self.error_norm / self.delta_norm if self.delta_norm > 0 else 0.0


def truncated_factors(delta: torch.Tensor, rank: int, dtype: torch.dtype = torch.float32, *,
                      low_rank: tuple[torch.Tensor, torch.Tensor] | None = None) -> Factors:
    """The rank-``rank`` truncated SVD of ``delta`` split evenly, B = U_r sqrt(S_r), A = sqrt(S_r) V_r^T,
    cast to ``dtype``; the error is measured against ``delta`` on the cast factors (what a reader of them
    gets). ``rank`` is capped at min(out, in), where the factorization is exact. ``low_rank=(L, R)`` with
    delta = L @ R (up to rounding) takes the SVD from the factors (``factored_svd``): O(n R^2), not O(n^3)."""
    if delta.dim() != 2:
        raise ValueError(f"a LoRA factorization needs a matrix, got shape {tuple(delta.shape)}")
    if rank < 1:
        raise ValueError(f"rank={rank} must be at least 1")
    d = delta.double()  # the SVD in float64: at full rank B A then reproduces ΔW to float32 rounding
    u, s, vh = torch.linalg.svd(d, full_matrices=False) if low_rank is None else factored_svd(*low_rank)
    r = min(rank, s.shape[0])
    root = s[:r].sqrt()
    b = (u[:, :r] * root).to(dtype)
    a = (root[:, None] * vh[:r]).to(dtype)
    error = torch.linalg.matrix_norm(d - b.double() @ a.double()).item()
    return Factors(b=b, a=a, delta_norm=torch.linalg.matrix_norm(d).item(), error_norm=error)


def total_relative_error(factors: Sequence[Factors]) -> float:
    """‖ΔW − B'A'‖_F / ‖ΔW‖_F over all modules together (each module a block of one big matrix)."""
    num = math.sqrt(sum(f.error_norm ** 2 for f in factors))
    den = math.sqrt(sum(f.delta_norm ** 2 for f in factors))
    return num / den if den > 0 else 0.0
