"""mergekit's newer merge methods beyond the study's: SCE, NuSLERP, Multi-SLERP, Karcher mean, NearSwap.

Pure functions on tensors, written to give mergekit 0.1.5's results (the same operations in the same
order, so float32 inputs give the same float32 outputs); each docstring names the mergekit file whose
semantics it follows and the paper or post behind the method. Every function computes in float32 (float64
inputs stay float64), as the rest of the merge does; the method-specific settings are checked at the edge
(``method_options.py``), not here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _compute(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float64 else x.float()


def sce(base: torch.Tensor, models: Sequence[torch.Tensor], select_topk: float = 1.0) -> torch.Tensor:
    """SCE: Select the entries whose task vectors vary most across models (the top ``select_topk`` fraction
    of the nonzero variances), Calculate one weight per model (its mean squared task vector, normalised),
    Erase the entries whose sign disagrees with the summed sign, and average the rest with those weights.

    Wan et al. 2024, FuseChat, https://arxiv.org/abs/2408.07990; semantics of mergekit 0.1.5's
    ``merge_methods/sce.py`` (``select_topk`` >= 1 selects everything; no per-model weight). Computed in
    the inputs' dtype (``merge.dtype``), as mergekit does: the top-k cut on bfloat16 variances keeps other
    entries than one on float32 variances (46 of 16,384 in an embedding of the parity suite)."""
    if not models:
        return base
    task_vectors = torch.stack([m.to(base.dtype) - base for m in models], dim=0)
    if select_topk < 1:
        task_vectors = task_vectors * _top_variance_mask(task_vectors, select_topk).unsqueeze(0)
    total = task_vectors.sum(dim=0)
    majority = (total >= 0).to(task_vectors.dtype) * 2 - 1  # TIES' sign election by summed mass
    agree = task_vectors.sign() == majority
    weights = _energy_weights(task_vectors)
    while weights.dim() < task_vectors.dim():
        weights = weights.unsqueeze(-1)
    kept = weights * agree
    merged = (task_vectors * kept).sum(dim=0)
    return base + merged / torch.sum(kept, dim=0).clamp(min=1e-6)


def _top_variance_mask(task_vectors: torch.Tensor, fraction: float) -> torch.Tensor:
    """1 on the int(fraction * nonzero) entries of largest variance across models, 0 elsewhere."""
    if fraction <= 0:
        return torch.zeros_like(task_vectors[0])
    var = torch.var(task_vectors, dim=0, unbiased=False)
    k = int(torch.count_nonzero(var) * fraction)
    mask = torch.zeros_like(var)
    if k == 0:
        return mask
    _, indices = torch.topk(var.abs().view(-1), k=k, largest=True)
    mask.view(-1)[indices] = 1
    return mask


def _energy_weights(task_vectors: torch.Tensor) -> torch.Tensor:
    """Each model's mean squared task vector over their sum (uniform when all are ~0)."""
    energy = task_vectors.square().reshape(task_vectors.shape[0], -1).mean(dim=1)
    total = torch.sum(energy).item()
    if abs(total) < 1e-6:
        return torch.ones_like(energy) / energy.shape[0]
    return energy / total


def nuslerp_interpolate(t: float, v0: torch.Tensor, v1: torch.Tensor, *, row_wise: bool = False,
                        flatten: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation of whole tensors (``flatten``) or of each row (last axis; ``row_wise``: of
    each vector along the first axis), falling back to linear interpolation where the two are collinear.
    mergekit 0.1.5 ``merge_methods/nuslerp.py`` (``nuslerp``)."""
    v0, v1 = _compute(v0), _compute(v1)
    out_shape = v0.shape
    dim = 0 if row_wise else -1
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif dim != -1:
        v0, v1 = v0.transpose(dim, -1), v1.transpose(dim, -1)

    def unit(x: torch.Tensor) -> torch.Tensor:
        return x / torch.norm(x, dim=-1, keepdim=True).clamp(min=1e-7)

    cos_theta = torch.sum(unit(v0) * unit(v1), dim=-1, keepdim=True).clamp(-1, 1)
    collinear = (1 - cos_theta.square()) <= eps**2
    theta = torch.acos(torch.where(collinear, 0, cos_theta))
    result = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)
    result = torch.where(collinear, (1 - t) * v0 + t * v1, result)
    if dim != -1 and not flatten:
        result = result.transpose(dim, -1)
    return result.reshape(out_shape)


def nuslerp(base: torch.Tensor | None, models: Sequence[torch.Tensor], weights: Sequence[float], *,
            row_wise: bool = False, flatten: bool = True) -> torch.Tensor:
    """NuSLERP of two models at t = w_1 / (w_0 + w_1) (0.5 when the weights sum to ~0): of their task
    vectors when a base is given (the result added back to it), else of the weights themselves.
    mergekit 0.1.5 ``merge_methods/nuslerp.py`` (``nuslerp_merge_method``)."""
    if len(models) != 2:
        raise ValueError(f"nuslerp merges exactly 2 models, got {len(models)}")
    total = sum(float(w) for w in weights)
    t = 0.5 if abs(total) < 1e-6 else float(weights[1]) / total
    a, b = _compute(models[0]), _compute(models[1])
    if base is None:
        return nuslerp_interpolate(t, a, b, row_wise=row_wise, flatten=flatten)
    base = _compute(base)
    return base + nuslerp_interpolate(t, a - base, b - base, row_wise=row_wise, flatten=flatten)


def multislerp(base: torch.Tensor | None, models: Sequence[torch.Tensor], weights: Sequence[float], *,
               normalize_weights: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Barycentric interpolation on the hypersphere: the (task) vectors' directions are mapped to the
    tangent space at their weighted mean direction, averaged there, mapped back by the exponential map and
    scaled to the weighted mean norm. One model is returned as it is; two exactly opposed directions fall
    back to the weighted sum; all-zero (task) vectors give the base (where mergekit raises). Goddard, https://goddard.blog/posts/multislerp-wow-what-a-cool-idea;
    mergekit 0.1.5 ``merge_methods/multislerp.py``."""
    if len(models) == 1:
        return _compute(models[0])
    tensors = torch.stack([_compute(m) for m in models], dim=0)
    if base is not None:
        base = _compute(base)
        tensors -= base
    flat = tensors.view(tensors.shape[0], -1)
    w = torch.tensor([float(x) for x in weights], dtype=tensors.dtype, device=tensors.device)
    if normalize_weights:
        w = w / w.sum()
    norms = torch.norm(flat, dim=-1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * w.view(-1, 1)).sum(0)
    mean_norm = torch.norm(mean)
    if mean_norm < eps:
        if not bool(norms.any()):  # nothing moved (e.g. a norm a LoRA left untouched): mergekit raises here
            res = tensors[0]
            return res + base if base is not None else res
        if tensors.shape[0] != 2:
            raise ValueError("multislerp: the weighted sum of the model directions is zero (opposed models whose "
                             "weights cancel); choose other weights")
        res = (tensors[0] * w[0] + tensors[1] * w[1]).view(tensors.shape[1:])
        return res + base if base is not None else res
    mean = mean / mean_norm
    tangent = units - (units * mean).sum(-1, keepdim=True) * mean
    tangent_mean = (tangent * w.view(-1, 1)).sum(0)
    tangent_norm = torch.norm(tangent_mean) + eps
    result = mean * torch.cos(tangent_norm) + tangent_mean * (torch.sin(tangent_norm) / tangent_norm)
    result = (result * (norms.squeeze(-1) * w).sum()).view(tensors.shape[1:])
    return result + base if base is not None else result


def karcher_mean(tensors: Sequence[torch.Tensor], weights: Sequence[float] | None = None, *, max_iter: int = 10,
                 tol: float = 1e-5) -> torch.Tensor:
    """The weighted Karcher (Riemannian) mean of the tensors' directions on the unit sphere, by at most
    ``max_iter`` fixed-point steps (stopping when the tangent update is below ``tol``), scaled by the
    weighted mean norm; tensors of norm <= ``tol`` take no part in the direction. ``weights`` (default:
    uniform, mergekit's only choice) are normalised to sum to 1.

    Karcher 1977; for model merging https://arxiv.org/abs/2603.04972; mergekit 0.1.5
    ``merge_methods/karcher.py`` (``karcher_merge_tensors``)."""
    tensors = [_compute(t) for t in tensors]
    if len(tensors) == 1:
        return tensors[0]
    if weights is None:
        alphas = [1.0 / len(tensors)] * len(tensors)
    else:
        total = sum(float(w) for w in weights)
        if total == 0:
            raise ValueError("karcher: the weights sum to 0; give weights with a nonzero sum")
        alphas = [float(w) / total for w in weights]
    norms = [torch.linalg.vector_norm(t) for t in tensors]
    units = [torch.zeros_like(t) if n.item() == 0.0 else t / n for t, n in zip(tensors, norms, strict=True)]
    valid = [i for i, n in enumerate(norms) if n.item() > tol]
    if not valid:
        return sum(t * 0 for t in tensors)
    valid_sum = sum(alphas[i] for i in valid)
    steps = [(alphas[i] / valid_sum, units[i]) for i in valid]
    mean = torch.zeros_like(units[valid[0]])
    for alpha, unit in steps:
        mean += alpha * unit
    mean_norm = torch.linalg.vector_norm(mean)
    mean = units[valid[0]].clone() if mean_norm.item() < tol else mean / mean_norm
    for _ in range(max_iter):
        tangent = torch.zeros_like(mean)
        for alpha, unit in steps:
            dot = torch.clamp(torch.dot(mean.flatten(), unit.flatten()), -1.0, 1.0)
            theta = torch.arccos(dot)
            if theta.item() < tol:
                continue
            tangent += alpha * (theta / torch.sin(theta)) * (unit - dot * mean)
        tangent_norm = torch.linalg.vector_norm(tangent)
        if tangent_norm.item() < tol:
            break
        mean = torch.cos(tangent_norm) * mean + torch.sin(tangent_norm) * (tangent / tangent_norm)
        unit_norm = torch.linalg.vector_norm(mean)
        if unit_norm.item() > tol:
            mean = mean / unit_norm
    scale = sum(alpha * norm for alpha, norm in zip(alphas, norms, strict=True))
    return scale * mean


def nearswap(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Take ``b``'s value where it is within ``t`` of ``a``'s, and move from ``b`` towards ``a`` the further
    they are apart: w = clamp(t / |a - b|, 0, 1), result w b + (1 - w) a. ``a`` is mergekit's base model.
    alchemonaut, https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001; mergekit 0.1.5
    ``merge_methods/nearswap.py``."""
    a, b = _compute(a), _compute(b)
    weight = (t / torch.abs(a - b).clamp(min=1e-6)).clamp(min=0, max=1)
    return weight * b + (1 - weight) * a
