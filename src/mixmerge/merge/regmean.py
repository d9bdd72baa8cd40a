"""RegMean: merge each linear layer by the least-squares fit of every specialist's outputs (pure).

Jin et al., ICLR 2023, "Dataless Knowledge Fusion by Merging Weights of Language Models",
https://arxiv.org/abs/2212.09849. For a linear layer y = x Wᵀ (torch layout: W is (out, in)) and the
inputs X_i (tokens x in) it sees under specialist i on that specialist's own task data, the merge

    W* = argmin_W  sum_i c_i ||X_i Wᵀ - X_i W_iᵀ||²   =>   W*ᵀ = (sum_i c_i G_i)⁻¹ sum_i c_i G_i W_iᵀ

with G_i = X_iᵀ X_i, the Gram matrix of the layer's inputs (here the per-token mean, as FusionBench does,
so a task's weight does not depend on how many tokens its data has). RegMean shrinks the off-diagonal
entries of every G_i by alpha (Section 3.2 of the paper: alpha = 1 is the plain regression, alpha = 0
keeps only the diagonal, i.e. each input feature's squared norm weights that column of W). ``c_i`` are
``merge.weights`` normalised to sum to one; the paper's merge is the uniform c_i = 1/N (the default
weight 0.5 with two models). Every other parameter (embeddings, norms, biases, the head) is the same
weighted average sum_i c_i theta_i, which is what RegMean gives a layer whose Gram is the identity.

RegMean++ (https://arxiv.org/abs/2508.03121) uses the same closed form; only its Gram matrices differ
(each layer's inputs come from the merged model's earlier layers, ``merge/gram.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# The linear system is solved with a ridge of RIDGE x (mean diagonal of sum_i c_i G_i) pulling towards the
# weighted average: an input feature that no task ever activates (a zero row in every Gram) then keeps the
# average instead of making the system singular. It leaves every identity exact (equal Grams -> the average,
# one model -> that model) and moves other solutions by about RIDGE relative.
RIDGE = 1e-8


def reduce_off_diagonal(gram: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha * G + (1 - alpha) * diag(G): off-diagonal entries scaled by alpha, the diagonal kept."""
    return alpha * gram + (1.0 - alpha) * torch.diag_embed(torch.diagonal(gram))


def merge_coefficients(weights: Sequence[float]) -> list[float]:
    """``merge.weights`` as the least-squares weights c_i (sum one); non-negative with a positive sum."""
    ws = [float(w) for w in weights]
    if any(w < 0 for w in ws) or sum(ws) <= 0:
        raise ValueError(f"merge.weights={ws} for regmean must be non-negative with a positive sum (they weight "
                         f"each specialist's squared error)")
    total = sum(ws)
    return [w / total for w in ws]


def weighted_average(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """sum_i c_i theta_i in float32: RegMean's merge of every parameter that is not a linear weight."""
    out = torch.zeros_like(tensors[0], dtype=torch.float32)
    for t, c in zip(tensors, merge_coefficients(weights), strict=True):
        out.add_(t.float(), alpha=c)
    return out


def regmean_linear(
    tensors: Sequence[torch.Tensor], grams: Sequence[torch.Tensor], weights: Sequence[float], alpha: float
) -> torch.Tensor:
    """The RegMean merge of one linear weight (out, in) given each model's input Gram (in, in); float32.

    Solved in float64: Grams of hidden states span several orders of magnitude.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"merge.alpha={alpha} is outside [0, 1]; it scales the Gram matrices' off-diagonal entries")
    if len(tensors) != len(grams):
        raise ValueError(f"regmean got {len(tensors)} weights but {len(grams)} Gram matrices")
    d_in = tensors[0].shape[-1]
    for g in grams:
        if tuple(g.shape) != (d_in, d_in):
            raise ValueError(f"a Gram matrix of shape {tuple(g.shape)} does not fit a weight of shape "
                             f"{tuple(tensors[0].shape)}; it must be ({d_in}, {d_in})")
    coefs = merge_coefficients(weights)
    lhs = torch.zeros((d_in, d_in), dtype=torch.float64)
    rhs = torch.zeros((d_in, tensors[0].shape[0]), dtype=torch.float64)
    average = torch.zeros_like(rhs)
    for w, g, c in zip(tensors, grams, coefs, strict=True):
        reduced = reduce_off_diagonal(g.double(), alpha) * c
        w_t = w.double().T
        lhs.add_(reduced)
        rhs.add_(reduced @ w_t)
        average.add_(w_t, alpha=c)
    ridge = RIDGE * float(torch.diagonal(lhs).mean()) if float(torch.diagonal(lhs).mean()) > 0 else RIDGE
    lhs.diagonal().add_(ridge)
    rhs.add_(average, alpha=ridge)
    return torch.linalg.solve(lhs, rhs).T.float().contiguous()


def regmean_tensor(
    tensors: Sequence[torch.Tensor], grams: Sequence[torch.Tensor] | None, weights: Sequence[float], alpha: float
) -> torch.Tensor:
    """One tensor of a RegMean merge: the closed form for a linear weight that has Grams, else the average."""
    if grams is None:
        return weighted_average(tensors, weights)
    return regmean_linear(tensors, grams, weights, alpha)
