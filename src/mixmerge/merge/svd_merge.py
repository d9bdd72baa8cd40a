"""Data-free merges from the singular value decompositions of the task matrices (pure torch).

Per weight matrix, with task matrices Delta_t = theta_t - theta_0 (one per specialist, t = 1..T):

- **TSV-M** (Gargiulo et al., "Task Singular Vectors: Reducing Task Interference in Model Merging",
  CVPR 2025, https://arxiv.org/abs/2412.00081, Sec. 4): keep each task's top k = r/T singular triplets
  (r = min(m, n)), concatenate them, U = [U_1^k .. U_T^k], S = diag(S_1^k .. S_T^k), V = [V_1^k .. V_T^k],
  decorrelate the singular vectors by the closest orthogonal matrices (Procrustes, U_perp = P Q^T from
  U = P Sigma Q^T, same for V), and merge Delta = U_perp S V_perp^T.
- **Iso-C** (Marczak et al., "No Task Left Behind: Isotropic Model Merging with Common and Task-Specific
  Subspaces", ICML 2025, https://arxiv.org/abs/2502.04959, Sec. 4.1): the sum Delta_TA = sum_t Delta_t =
  U S V^T gets a flat spectrum, Delta = sigma_bar U V^T, sigma_bar = mean of the r singular values.
- **Iso-CTS** (same paper, Sec. 4.2): the top k = f r directions of Delta_TA (the common subspace, f = 0.8)
  plus, per task, the top s = (r - k)/T directions of that task's matrix after projecting out the common
  left subspace (Delta_t - U_c U_c^T Delta_t); the concatenated vectors are orthogonalised as in TSV-M and
  the spectrum flattened to the mean of the kept singular values.

Subspace sizes follow the authors' code (FusionBench, danielm1405/iso-merging): TSV-M keeps
``int(r / T)`` triplets per task; Iso-CTS rounds the task-specific total to a multiple of T.

The merged matrix is ``theta_0 + lambda * Delta`` (``lambda`` is the papers' alpha). Task t's matrix enters
as ``c_t Delta_t`` with ``c_t = T w_t / sum_j w_j``: equal weights (the default) give the papers' unweighted
task matrices, other weights shift the shares between tasks without changing the overall scale.

Tensors that are not weight matrices fall back to task arithmetic with normalised weights,
``theta_0 + lambda sum_t w_t Delta_t / sum_t w_t`` (the mean of the task vectors at equal weights, as both
reference implementations do): biases and norms (1-D), the token embeddings and ``lm_head`` (lookup tables
over the vocabulary, whose fine-tuning deltas move only the rows of the tokens seen; a low-rank or
isotropic rewrite would spread them over every token, and their SVD is the largest of the model), and
matrices with fewer than T rows or columns (no direction per task).

SVDs run in float32: their relative error (~1e-6 of the largest singular value) is far below the bfloat16
rounding of the output (~4e-3), and float64 costs 1.8x the time (0.30 s against 0.17 s for one 1536 x 576
SVD on one CPU thread) and twice the memory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mixmerge.merge import kernels as K

KINDS = ("tsv", "iso_c", "iso_cts")
DEFAULT_COMMON_SPACE_FRACTION = 0.8  # Iso-CTS: the authors' default (iso-merging config/method/iso_cts.yaml)
# Vocabulary-sized tables (token and position embeddings, the output head) stay with task arithmetic.
VOCAB_MATRICES = ("embed_tokens", "embed_positions", "embed_in", "embed_out", "word_embeddings", "lm_head",
                  "wte", "wpe")


def svd_applies(tensor_name: str, shape: Sequence[int], n_models: int) -> bool:
    """A weight matrix these methods rewrite: 2-D, not a vocabulary table, at least T rows and columns."""
    if len(shape) != 2 or min(shape) < n_models:
        return False
    return not any(hint in tensor_name for hint in VOCAB_MATRICES)


def task_shares(weights: Sequence[float], tensor_name: str = "") -> list[float]:
    """c_t = T w_t / sum_j w_j: the factor of each task matrix (1 each for equal weights)."""
    total = float(sum(weights))
    if not total > 0:
        raise ValueError(f"merge.weights={list(weights)!r} sum to {total} at tensor {tensor_name!r}; the SVD "
                         f"merges need non-negative weights with a positive sum (they are the tasks' shares)")
    return [len(weights) * float(w) / total for w in weights]


def closest_orthogonal(x: torch.Tensor) -> torch.Tensor:
    """The matrix with orthonormal columns (tall x) or rows (wide x) nearest to x in Frobenius norm:
    P Q^T from x = P Sigma Q^T (the orthogonal Procrustes solution, TSV-M's decorrelation step).

    LAPACK's float32 divide-and-conquer SVD can fail to converge on the nearly rank-deficient stacks Iso-CTS
    builds (it did on one of SmolLM2-135M's matrices): such a matrix is decomposed again in float64."""
    try:
        p, _, qh = torch.linalg.svd(x, full_matrices=False)
    except torch.linalg.LinAlgError:
        if x.dtype == torch.float64:
            raise
        p, _, qh = torch.linalg.svd(x.double(), full_matrices=False)
        return (p @ qh).to(x.dtype)
    return p @ qh


def tsv_kept_rank(rank: int, n_models: int, rank_fraction: float | None = None) -> int:
    """Singular triplets TSV-M keeps per task: int(r / T) (the paper's), or int(fraction * r), at least 1."""
    if rank_fraction is None:
        return max(1, rank // n_models)
    return max(1, math.floor(rank_fraction * rank + 1e-9))  # the epsilon: 0.3 * 10 must be 3, not 2


@dataclass(frozen=True)
class TsvFactors:
    """TSV-M's decorrelated singular vectors of one matrix and each task's kept singular values: they depend
    on the task matrices and the kept rank only, so a sweep computes them once and every trial's weights
    just rescale the singular values (``tsv_from_factors``)."""

    u_perp: torch.Tensor  # (m, T k): orthonormal columns
    singular: torch.Tensor  # (T, k): task t's top k singular values
    vh_perp: torch.Tensor  # (T k, n): orthonormal rows


def tsv_factors(taus: Sequence[torch.Tensor], rank_fraction: float | None = None) -> TsvFactors:
    """The top k singular triplets of each task matrix, the vectors decorrelated (Procrustes)."""
    rank = min(taus[0].shape)
    k = tsv_kept_rank(rank, len(taus), rank_fraction)
    us, ss, vhs = [], [], []
    for tau in taus:
        u, s, vh = torch.linalg.svd(tau, full_matrices=False)
        us.append(u[:, :k])
        ss.append(s[:k])
        vhs.append(vh[:k])
    return TsvFactors(closest_orthogonal(torch.cat(us, dim=1)), torch.stack(ss),
                      closest_orthogonal(torch.cat(vhs, dim=0)))


def tsv_from_factors(factors: TsvFactors, shares: Sequence[float] | None = None) -> torch.Tensor:
    """TSV-M's merged task matrix U_perp diag(c_t S_t) V_perp^T: task t's singular values times its share
    (the SVD of c_t Delta_t is U_t (c_t S_t) V_t^T, so for c_t > 0 this is TSV-M of the scaled matrices; a
    zero share keeps the task's directions in the decorrelation, with zero weight)."""
    singular = factors.singular
    if shares is not None:
        singular = singular * torch.tensor(list(shares), dtype=singular.dtype, device=singular.device)[:, None]
    return (factors.u_perp * singular.reshape(-1)) @ factors.vh_perp


def tsv_merge(deltas: Sequence[torch.Tensor], rank_fraction: float | None = None) -> torch.Tensor:
    """TSV-M's merged task matrix (no lambda): the top k singular triplets of each task, decorrelated."""
    return tsv_from_factors(tsv_factors(deltas, rank_fraction))


def iso_c_merge(deltas: Sequence[torch.Tensor]) -> torch.Tensor:
    """Iso-C's merged task matrix (no alpha): the sum of the task matrices with every singular value
    replaced by their mean."""
    u, s, vh = torch.linalg.svd(torch.stack(list(deltas)).sum(dim=0), full_matrices=False)
    return s.mean() * (u @ vh)


def iso_cts_sizes(rank: int, n_models: int, common_fraction: float) -> tuple[int, int]:
    """(common directions, directions per task) for Iso-CTS, as the authors' code computes them: the
    task-specific total rounded to a multiple of T (and capped so it fits in r)."""
    common = int(rank * common_fraction)
    per_task = min(round((rank - common) / n_models), rank // n_models)
    return rank - per_task * n_models, per_task


def iso_cts_merge(deltas: Sequence[torch.Tensor],
                  common_fraction: float = DEFAULT_COMMON_SPACE_FRACTION) -> torch.Tensor:
    """Iso-CTS's merged task matrix (no alpha): the common subspace of the summed task matrices plus each
    task's own directions outside it, orthogonalised, with a flat spectrum."""
    rank = min(deltas[0].shape)
    n_common, per_task = iso_cts_sizes(rank, len(deltas), common_fraction)
    u, s, vh = torch.linalg.svd(torch.stack(list(deltas)).sum(dim=0), full_matrices=False)
    us, ss, vhs = [u[:, :n_common]], [s[:n_common]], [vh[:n_common]]
    if per_task > 0:
        u_common = us[0]
        for d in deltas:
            specific = d - u_common @ (u_common.T @ d)  # the task's matrix outside the common left subspace
            ut, st, vht = torch.linalg.svd(specific, full_matrices=False)
            us.append(ut[:, :per_task])
            ss.append(st[:per_task])
            vhs.append(vht[:per_task])
    sigma_bar = torch.cat(ss).mean()
    return sigma_bar * (closest_orthogonal(torch.cat(us, dim=1)) @ closest_orthogonal(torch.cat(vhs, dim=0)))


def svd_merge(kind: str, tensor_name: str, base: torch.Tensor, models: Sequence[torch.Tensor],
              weights: Sequence[float], lam: float, *, rank_fraction: float | None = None,
              common_fraction: float = DEFAULT_COMMON_SPACE_FRACTION,
              factors: TsvFactors | None = None) -> torch.Tensor:
    """One tensor through TSV-M, Iso-C or Iso-CTS (``kind``): theta_0 + lambda Delta, float32.
    ``factors``: TSV-M's ``tsv_factors`` of these task matrices, computed earlier (a sweep's cache)."""
    if kind not in KINDS:
        raise ValueError(f"{kind!r} is not an SVD merge; known: {', '.join(KINDS)}")
    base32 = base.float()
    taus = [K.task_vector(m, base32) for m in models]
    if not svd_applies(tensor_name, base32.shape, len(models)):
        return K.merge_task_vectors(torch.stack(taus), weights, consensus=None, normalize=True, lam=lam,
                                    base=base32)
    shares = task_shares(weights, tensor_name)
    if kind == "tsv":
        merged = tsv_from_factors(factors if factors is not None else tsv_factors(taus, rank_fraction), shares)
    elif kind == "iso_c":
        merged = iso_c_merge([c * tau for c, tau in zip(shares, taus, strict=True)])
    else:
        merged = iso_cts_merge([c * tau for c, tau in zip(shares, taus, strict=True)], common_fraction)
    return base32 + lam * merged
