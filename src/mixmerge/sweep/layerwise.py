"""Layer-wise merge search: per-block weights and densities from a trial's scalars (pure, no Hydra, no I/O).

``hparams_search=merge_optuna_layerwise`` cuts the decoder's layers into ``blocks`` contiguous blocks and
gives each block, separately for its attention (``self_attn``) and MLP (``mlp``) tensors, its own codegen
weight (codesum: 1 − weight) and, for methods that sparsify, its own density. The merge config that results
is plain mergekit syntax: per model, filter rules whose values are layer gradients.

Why piecewise-constant blocks and not a K-point gradient: mergekit interpolates a gradient linearly between
its points, so each searched point would move the layers of its neighbours too, and the seed (a share
measured over a block's layers) would not be the value any layer gets. A gradient with one value per layer
that repeats each block's value is still mergekit's syntax and gives every layer exactly its block's value.

Why the search runs in logit offsets around a seed: a trial's scalars (``+layerwise.point.attn_weight_0``...)
are offsets, and a block's weight is σ(logit(seed) + offset). The weight seed is codegen's share of the
delta norm in that block and module group (the analysis of the specialists, measured once); the density
seed is ``merge.density``. So the all-zero point, which the sweeper enqueues as trial 0 and where CMA-ES
starts its mean (the centre of the box), is the analysis-derived merge, the sweeper needs no data before
the first job, and every offset maps to a valid weight in (0, 1) without clipping.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mixmerge.merge.registry import MergeMethod, get_method

# Where the sweeper writes a trial's scalars; ``+`` because their number depends on ``layerwise.blocks``,
# so no YAML can declare them (``layerwise.point: null`` leaves the node open).
POINT_KEY = "layerwise.point"
# A share of exactly 0 or 1 (a task that did not move a block at all) has no logit; it is held this far inside.
SHARE_MARGIN = 0.01


@dataclass(frozen=True)
class ModuleGroup:
    """One searched group of tensors: the merge's filter (a substring of the tensor name, as mergekit
    matches it) and the analysis' module types that make it up (``analysis.layers.locate``)."""

    filter: str
    module_types: tuple[str, ...]


GROUPS: dict[str, ModuleGroup] = {
    "attn": ModuleGroup("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
    "mlp": ModuleGroup("mlp", ("gate_proj", "up_proj", "down_proj")),
}


def searched_fields(method: MergeMethod) -> tuple[str, ...]:
    """``weight`` for every weighted method, and ``density`` for those that sparsify."""
    if not method.task_vector_family:
        raise ValueError(f"merge.method={method.name}: the layer-wise search sets per-block weights, which only "
                         "linear and the task-vector methods (task_arithmetic, ties, dare, della, breadcrumbs) "
                         "take; pick one of them (e.g. merge=ties)")
    return ("weight", "density") if method.sparsify is not None else ("weight",)


def param_name(group: str, field: str, block: int) -> str:
    """A trial scalar's key below ``layerwise.point``, e.g. ``attn_weight_0``."""
    return f"{group}_{field}_{block}"


def _check_blocks(blocks: Any) -> int:
    if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
        raise ValueError(f"layerwise.blocks={blocks!r} must be an integer >= 1 (the number of layer blocks, "
                         "each searched separately for attention and MLP)")
    return blocks


def block_space(*, blocks: int, method: str, weight_range: float, density_range: float) -> dict[str, Any]:
    """The sweeper's search space (``hydra.sweeper.spaces.layerwise``): one logit offset per block, module
    group and searched field, each in ``[-range, range]``, and the all-zero seed point enqueued first."""
    blocks = _check_blocks(blocks)
    fields = searched_fields(get_method(method))
    ranges = {"weight": weight_range, "density": density_range}
    for field in fields:
        r = ranges[field]
        if isinstance(r, bool) or not isinstance(r, int | float) or not 0 < r < 20:
            raise ValueError(f"layerwise.{field}_range={r!r} must be a number in (0, 20): the searched logit "
                             f"offset (2 moves a share of 0.5 within [0.12, 0.88])")
    params = {f"+{POINT_KEY}.{param_name(g, f, b)}": f"interval({-float(ranges[f])}, {float(ranges[f])})"
              for f in fields for g in GROUPS for b in range(blocks)}
    return {"params": params, "enqueue": [{name: 0.0 for name in params}]}


def block_of_layer(layer: int, n_layers: int, blocks: int) -> int:
    """The block of layer ``layer``: ``blocks`` contiguous runs of layers, sizes differing by at most one."""
    return layer * blocks // n_layers


def layers_of_blocks(n_layers: int, blocks: int) -> list[list[int]]:
    """The layers of each block, in order."""
    if blocks > n_layers:
        raise ValueError(f"layerwise.blocks={blocks} is more than the model's {n_layers} layers: some blocks "
                         f"would hold no layer; use layerwise.blocks<={n_layers}")
    out: list[list[int]] = [[] for _ in range(blocks)]
    for layer in range(n_layers):
        out[block_of_layer(layer, n_layers, blocks)].append(layer)
    return out


def block_gradient(per_block: Sequence[float], n_layers: int) -> list[float]:
    """A mergekit layer gradient with one value per layer, each layer's its block's: piecewise constant
    (a list of n values on n layers puts layer i exactly on entry i)."""
    blocks = len(per_block)
    layers_of_blocks(n_layers, blocks)  # refuses more blocks than layers
    return [float(per_block[block_of_layer(i, n_layers, blocks)]) for i in range(n_layers)]


def block_shares(norm_rows: Sequence[Mapping[str, Any]], models: Sequence[str], n_layers: int,
                 blocks: int) -> dict[str, list[float]]:
    """Per module group, each block's share of the first model's delta norm:
    ‖Δ₀‖ / (‖Δ₀‖ + ‖Δ₁‖) over the block's tensors of that group.

    ``norm_rows`` are the analysis' rows (``AnalysisResult.norm_rows``: model, layer, module, l2); the rows
    of one (layer, module type) hold that part's delta L2, whose squares add up to the block's."""
    if len(models) != 2:
        raise ValueError(f"the layer-wise seed is codegen's share against one other task; got {len(models)} "
                         f"specialists {list(models)} (use a task config with two tasks, e.g. task=mixture)")
    layers = layers_of_blocks(n_layers, blocks)
    sq = {(m, g, b): 0.0 for m in models for g in GROUPS for b in range(blocks)}
    seen = set()
    for row in norm_rows:
        layer, module, model = row["layer"], row["module"], row["model"]
        if model not in models or not isinstance(layer, int):
            continue
        for g, group in GROUPS.items():
            if module in group.module_types:
                if not 0 <= layer < n_layers:
                    raise ValueError(f"analysis row of layer {layer} outside the model's {n_layers} layers")
                sq[model, g, block_of_layer(layer, n_layers, blocks)] += float(row["l2"]) ** 2
                seen.add((model, g))
    out: dict[str, list[float]] = {}
    for g in GROUPS:
        missing = [m for m in models if (m, g) not in seen]
        if missing:
            raise ValueError(f"the analysis found no {GROUPS[g].module_types} tensors for {missing}; the layer-wise "
                             "search needs a decoder with Llama-style attention and MLP projections")
        shares = []
        for b in range(blocks):
            n0, n1 = math.sqrt(sq[models[0], g, b]), math.sqrt(sq[models[1], g, b])
            if n0 + n1 == 0:
                raise ValueError(f"neither specialist moved the {g} tensors of layers {layers[b]}: no share to seed "
                                 "from (were the specialists trained?)")
            shares.append(n0 / (n0 + n1))
        out[g] = shares
    return out


def shifted(seed: float, offset: float, low: float = 0.0, high: float = 1.0) -> float:
    """``seed`` moved by ``offset`` in logit space inside (low, high): low + (high−low)·σ(logit(u) + offset),
    with u = (seed−low)/(high−low); offset 0 gives the seed back."""
    u = (seed - low) / (high - low)
    z = math.log(u / (1 - u)) + offset
    return low + (high - low) / (1 + math.exp(-z)) if z > -700 else low


def _scalar(merge_cfg: Mapping[str, Any], key: str, default: float) -> float:
    value = merge_cfg.get(key)
    value = default if value is None else value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"merge.{key}={value!r}: the layer-wise search needs one number here (its seed and the "
                         "value of tensors outside the attention and MLP blocks), not a list")
    return float(value)


def point_offsets(point: Mapping[str, Any], blocks: int, fields: Sequence[str]) -> dict[str, dict[str, list[float]]]:
    """The trial's offsets as {field: {group: [one per block]}}; every expected key present, no other."""
    expected = {param_name(g, f, b) for f in fields for g in GROUPS for b in range(blocks)}
    given = set(point)
    if given != expected:
        raise ValueError(f"{POINT_KEY} must hold exactly {sorted(expected)} for layerwise.blocks={blocks}; "
                         f"missing {sorted(expected - given)}, unexpected {sorted(given - expected)}")
    out: dict[str, dict[str, list[float]]] = {}
    for f in fields:
        out[f] = {}
        for g in GROUPS:
            values = []
            for b in range(blocks):
                v = point[param_name(g, f, b)]
                if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                    raise ValueError(f"{POINT_KEY}.{param_name(g, f, b)}={v!r} must be a finite number")
                values.append(float(v))
            out[f][g] = values
    return out


def validate_layerwise(layerwise: Mapping[str, Any], merge_cfg: Mapping[str, Any], n_models: int) -> None:
    """Before any work: a trial point that the translation will accept (blocks, keys, method, scalars)."""
    if layerwise.get("point") is None:
        return
    blocks = _check_blocks(layerwise.get("blocks"))
    method = get_method(str(merge_cfg.get("method")))
    point_offsets(layerwise["point"], blocks, searched_fields(method))
    if n_models != 2:
        raise ValueError(f"a layer-wise merge gives codegen weight w per block and the other task 1 − w, so it "
                         f"merges exactly two specialists; task.tasks has {n_models} (use task=mixture)")
    if merge_cfg.get("weights") is not None:
        raise ValueError("merge.weights is set, but a layer-wise merge sets the weights itself; use "
                         "merge.weights=null (merge.weight is the value of the tensors outside the blocks)")
    _density_bounds(method, merge_cfg)


def _density_bounds(method: MergeMethod, merge_cfg: Mapping[str, Any]) -> tuple[float, float, float]:
    """(seed, low, high) of the density: DELLA keeps density ± epsilon inside (0, 1), so its densities are
    confined to (epsilon, 1 − epsilon)."""
    seed = _scalar(merge_cfg, "density", 1.0)
    low = _scalar(merge_cfg, "epsilon", method.default_epsilon) if method.sparsify == "della" else 0.0
    high = 1.0 - low
    if "density" in searched_fields(method) and not low < seed < high:
        raise ValueError(f"merge.density={seed} is the seed of the per-block densities and must lie in ({low}, "
                         f"{high}) (open: a density of 1 has no logit)"
                         + (f", as DELLA keeps density ± merge.epsilon={low} inside (0, 1)" if low else ""))
    return seed, low, high


def block_values(merge_cfg: Mapping[str, Any], shares: Mapping[str, Sequence[float]],
                 offsets: Mapping[str, Mapping[str, Sequence[float]]]) -> dict[str, dict[str, list[float]]]:
    """Each block's codegen weight (σ(logit(share) + offset)) and density (σ around merge.density), as
    {field: {group: [one per block]}}."""
    method = get_method(str(merge_cfg["method"]))
    out: dict[str, dict[str, list[float]]] = {"weight": {}}
    for g, per_block in offsets["weight"].items():
        seeds = [min(1 - SHARE_MARGIN, max(SHARE_MARGIN, s)) for s in shares[g]]
        out["weight"][g] = [shifted(s, o) for s, o in zip(seeds, per_block, strict=True)]
    if "density" in offsets:
        seed, low, high = _density_bounds(method, merge_cfg)
        out["density"] = {g: [shifted(seed, o, low, high) for o in per_block]
                          for g, per_block in offsets["density"].items()}
    return out


def _rules(per_group: Mapping[str, Sequence[float]], fallback: float, n_layers: int) -> list[dict[str, Any]]:
    """mergekit filter rules: one layer gradient per module group, then the value of every other tensor."""
    rules: list[dict[str, Any]] = [{"filter": GROUPS[g].filter, "value": block_gradient(v, n_layers)}
                                   for g, v in per_group.items()]
    return [*rules, {"value": float(fallback)}]


def schedule_config(merge_cfg: Mapping[str, Any], values: Mapping[str, Mapping[str, Sequence[float]]],
                    n_layers: int) -> dict[str, Any]:
    """The merge config of a layer-wise trial: ``weights`` (codegen w, codesum 1 − w) and, when searched,
    ``density`` (the same for both) as per-model filter rules over layer gradients; tensors outside the
    attention and MLP blocks keep ``merge.weight`` / ``merge.density``."""
    method = get_method(str(merge_cfg["method"]))
    w = _scalar(merge_cfg, "weight", 0.5)
    out = dict(merge_cfg)
    out["weights"] = [_rules(values["weight"], w, n_layers),
                      _rules({g: [1 - x for x in v] for g, v in values["weight"].items()}, 1 - w, n_layers)]
    if "density" in values:
        d = _density_bounds(method, merge_cfg)[0]
        out["density"] = [_rules(values["density"], d, n_layers) for _ in range(2)]
    return out


def layerwise_merge(merge_cfg: Mapping[str, Any], layerwise: Mapping[str, Any], shares: Mapping[str, Sequence[float]],
                    n_layers: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A trial's merge config and a record of it (seeds, offsets, per-block values, each block's layers)."""
    blocks = _check_blocks(layerwise.get("blocks"))
    method = get_method(str(merge_cfg["method"]))
    offsets = point_offsets(layerwise["point"], blocks, searched_fields(method))
    values = block_values(merge_cfg, shares, offsets)
    merged_cfg = schedule_config(merge_cfg, values, n_layers)
    record = {"blocks": blocks, "n_layers": n_layers, "layers": layers_of_blocks(n_layers, blocks),
              "filters": {g: GROUPS[g].filter for g in GROUPS}, "shares": {g: list(v) for g, v in shares.items()},
              "offsets": offsets, **values,
              "merge": {k: merged_cfg[k] for k in ("method", "weight", "weights", "density") if k in merged_cfg}}
    return merged_cfg, record
