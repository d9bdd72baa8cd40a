"""One tensor through one merge method: dispatch from a registry row to the kernels (pure)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from mixmerge.merge import kernels as K
from mixmerge.merge import svd_merge as SVD
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
    return SPARSIFIERS[kind](delta, params, i, lambda: K.tensor_key(params.seed, tensor_name, i))


def merge_whole(
    tensor_name: str,
    base: torch.Tensor | None,
    models: Sequence[torch.Tensor],
    params: MergeParams,
    *,
    fishers: Sequence[torch.Tensor] | None = None,
    n_layers: int = 1,
) -> torch.Tensor:
    """The methods that combine whole weights rather than sparsified task vectors (linear, slerp,
    model_stock, fisher): the one dispatch on ``method.kind`` that both engines call."""
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
) -> tuple[torch.Tensor, K.KernelStats | None]:
    """Merge one tensor; returns the float32 result and (for task-vector methods) its diagnostics."""
    if params.method.kind != "gta":
        return merge_whole(tensor_name, base, models, params, fishers=fishers, n_layers=n_layers), None
    base32 = base.float()
    stacked = sparsify_stack(tensor_name, [K.task_vector(m, base32) for m in models], params)
    stats = K.delta_stats(stacked) if with_stats else None
    return combine_sparse(base32, stacked, params), stats


def sparsify_stack(tensor_name: str, deltas: Sequence[torch.Tensor], params: MergeParams) -> torch.Tensor:
    """All models' sparsified task vectors for one tensor, stacked on dim 0."""
    return torch.stack([sparsify_delta(d, params, i, tensor_name) for i, d in enumerate(deltas)])


def sparsity_key(params: MergeParams) -> tuple:
    """What the sparsified deltas depend on (not the weights, lambda or normalize)."""
    return (params.method.sparsify, tuple(params.densities), tuple(params.epsilons), tuple(params.gammas),
            params.seed, params.rescale, params.schedules)


def combine_sparse(base: torch.Tensor, stacked: torch.Tensor, params: MergeParams) -> torch.Tensor:
    """base + the method's combination of already-sparsified deltas (float32)."""
    return K.merge_task_vectors(stacked, params.weights, consensus=params.method.consensus,
                                normalize=params.normalize, lam=params.lam, base=base)
