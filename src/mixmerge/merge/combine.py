"""One tensor through one merge method: dispatch from a registry row to the kernels (pure)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from mixmerge.merge import kernels as K
from mixmerge.merge import mergekit_methods as MK
from mixmerge.merge import svd_merge as SVD
from mixmerge.merge.correlation_merge import Measurement, merge_correlated
from mixmerge.merge.params import MergeParams


def _magnitude(delta, params: MergeParams, i: int, key) -> torch.Tensor:
    return K.sparsify_magnitude(delta, params.densities[i], params.rescale)


def _breadcrumbs(delta, params: MergeParams, i: int, key) -> torch.Tensor:
    return K.sparsify_breadcrumbs(delta, params.densities[i], params.gammas[i], params.rescale)


def _random(delta, params: MergeParams, i: int, key) -> torch.Tensor:
    return K.sparsify_random(delta, params.densities[i], key(), params.rescale)


def _della(delta, params: MergeParams, i: int, key) -> torch.Tensor:
    return K.sparsify_della(delta, params.densities[i], params.epsilons[i], key(), params.rescale)


# A registry row's ``sparsify`` -> its torch kernel, called as (task vector, params, model index, key())
# where key() is the (seed, tensor, model) key of random masks. A new sparsifier: its kernel in kernels.py,
# a row here, a method row in registry.py and its YAML (on a CPU it runs here until fast_gta learns it).
SPARSIFIERS: dict[str, Callable[..., torch.Tensor]] = {
    "magnitude": _magnitude, "breadcrumbs": _breadcrumbs, "random": _random, "della": _della,
}


def sparsify_delta(delta: torch.Tensor, params: MergeParams, i: int, tensor_name: str) -> torch.Tensor:
    """Model ``i``'s task vector after the method's sparsifier (random ones seeded by tensor name)."""
    kind, density = params.method.sparsify, params.densities[i]
    if kind is None or density >= 1:
        return delta
    if kind not in SPARSIFIERS:
        raise ValueError(f"unknown sparsifier {kind!r} (merge.method={params.method.name}); known: "
                         f"{', '.join(SPARSIFIERS)}")
    # in the task vector's dtype: DELLA's float32 keep probabilities must not promote a bfloat16 delta
    return SPARSIFIERS[kind](delta, params, i, lambda: K.tensor_key(params.seed, tensor_name, i)).to(delta.dtype)


def merge_whole(
    tensor_name: str,
    base: torch.Tensor | None,
    models: Sequence[torch.Tensor],
    params: MergeParams,
    *,
    fishers: Sequence[torch.Tensor] | None = None,
    n_layers: int = 1,
    grams: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """The methods that combine whole weights rather than sparsified task vectors (linear, slerp,
    model_stock, fisher; correlation, whose own dispatch also returns its decision): the one dispatch on
    ``method.kind`` that both engines call."""
    kind = params.method.kind
    if kind == "linear":
        return K.linear_average(models, params.weights, params.normalize)
    if kind == "slerp":
        return K.slerp(params.t.at(tensor_name, n_layers), models[0], models[1])
    if kind == "model_stock":
        return K.model_stock(base, models, params.filter_wise)
    if kind == "fisher":
        if fishers is None:
            params.require_fisher_paths(len(models))  # raises: names the field and the fix
        return K.fisher_weighted_average(models, fishers, params.weights, params.fisher_floor)
    if kind == "correlation":
        base32 = base.float()
        return merge_correlation(base32, [K.task_vector(m, base32) for m in models], params)[0]
    if kind in MERGEKIT_KINDS:
        return _merge_mergekit_method(tensor_name, base, models, params, n_layers)
    if kind == "regmean":  # grams: this tensor's per-model Grams; None for tensors without (averaged)
        from mixmerge.merge.regmean import regmean_tensor

        return regmean_tensor(models, grams, params.weights, params.alpha)
    if params.method.svd_based:  # TSV-M, Iso-C, Iso-CTS
        return SVD.svd_merge(kind, tensor_name, base, models, params.weights, params.lam,
                             rank_fraction=params.tsv_rank_fraction, common_fraction=params.common_space_fraction)
    raise ValueError(f"merge kind {kind!r} of method {params.method.name!r} has no whole-weight kernel")


def merge_tensor(
    tensor_name: str,
    base: torch.Tensor | None,
    models: Sequence[torch.Tensor],
    params: MergeParams,
    *,
    fishers: Sequence[torch.Tensor] | None = None,
    n_layers: int = 1,
    with_stats: bool = True,
    compute_dtype: torch.dtype = torch.float32,
    grams: Sequence[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, K.KernelStats | None]:
    """Merge one tensor in ``compute_dtype`` (``merge.dtype``; mergekit casts the inputs to it and merges in
    it); returns the result in that dtype and (for task-vector methods) its diagnostics."""
    if params.method.kind == "correlation":  # its diagnostics carry the per-tensor decision (float32 only)
        base32 = base.float()
        merged, stats = merge_correlation(base32, [K.task_vector(m, base32) for m in models], params)
        return merged.to(compute_dtype), stats
    if params.method.kind != "gta":
        base_c = base.to(compute_dtype) if base is not None else None
        merged = merge_whole(tensor_name, base_c, [m.to(compute_dtype) for m in models], params, fishers=fishers,
                             n_layers=n_layers, grams=grams)
        return merged.to(compute_dtype), None
    base_c = base.to(compute_dtype)
    stacked = sparsify_stack(tensor_name, [K.task_vector(m, base_c, compute_dtype) for m in models], params)
    stats = K.delta_stats(stacked) if with_stats else None
    return combine_sparse(base_c, stacked, params), stats


def sparsify_stack(tensor_name: str, deltas: Sequence[torch.Tensor], params: MergeParams) -> torch.Tensor:
    """All models' sparsified task vectors for one tensor, stacked on dim 0."""
    return torch.stack([sparsify_delta(d, params, i, tensor_name) for i, d in enumerate(deltas)])


def sparsity_key(params: MergeParams) -> tuple:
    """What the sparsified deltas depend on (not the weights, lambda or normalize)."""
    return (params.method.sparsify, tuple(params.densities), tuple(params.epsilons), tuple(params.gammas),
            params.seed, params.rescale, params.schedules)


def combine_sparse(base: torch.Tensor, stacked: torch.Tensor, params: MergeParams) -> torch.Tensor:
    """base + the method's combination of already-sparsified deltas (in their dtype)."""
    return K.merge_task_vectors(stacked, params.weights, consensus=params.method.consensus,
                                normalize=params.normalize, lam=params.lam, base=base)


def merge_correlation(base: torch.Tensor, deltas, params: MergeParams, measured: Measurement | None = None,
                      with_stats: bool = True) -> tuple[torch.Tensor, K.KernelStats]:
    """``merge=correlation``: one tensor merged by the rule of ``correlation_rule.py`` from its task vectors'
    measured correlation, sign conflicts and norms (``measured``, when known); the stats hold the decision."""
    return merge_correlated(base, deltas, params.correlation, params.weights, lam=params.lam,
                            normalize=params.normalize, rescale=params.rescale, measured=measured,
                            with_stats=with_stats)


MERGEKIT_KINDS = ("sce", "nuslerp", "multislerp", "karcher", "nearswap")


def _merge_mergekit_method(tensor_name: str, base: torch.Tensor | None, models: Sequence[torch.Tensor],
                           params: MergeParams, n_layers: int) -> torch.Tensor:
    """SCE, NuSLERP, Multi-SLERP, Karcher and NearSwap (``mergekit_methods.py``). ``base`` is None when the
    merge has none: NuSLERP and Multi-SLERP then interpolate the weights, not the task vectors."""
    kind, opts = params.method.kind, params.options
    if kind == "sce":
        return MK.sce(base, models, opts["select_topk"].at(tensor_name, n_layers))
    if kind == "nuslerp":
        return MK.nuslerp(base, models, params.weights, row_wise=opts["nuslerp_row_wise"],
                          flatten=opts["nuslerp_flatten"])
    if kind == "multislerp":
        return MK.multislerp(base, models, params.weights, normalize_weights=opts["normalize_weights"],
                             eps=opts["eps"])
    if kind == "karcher":
        return MK.karcher_mean(models, params.weights, max_iter=opts["max_iter"], tol=opts["tol"])
    return MK.nearswap(models[0], models[1], params.t.at(tensor_name, n_layers))
