"""Merge config -> resolved, validated parameters (pure: no files).

Per-model parameters (``weight``/``weights``, ``density``, ``epsilon``, ``gamma``) take a number for
all models or a list with one value per model; global ones (``lambda``, ``normalize``, ``rescale``)
take one value. ``normalize``/``rescale`` left null use the method's default (mergekit's, in its
registry row). The edge resolves a config once (``resolve_params``) and passes the ``MergeParams`` down.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mixmerge.dtypes import DTYPE_NAMES
from mixmerge.merge.common import RESCALE_MODES
from mixmerge.merge.registry import MergeMethod, get_method
from mixmerge.merge.tensor_names import layer_index

VOCAB_POLICIES = ("strict", "truncate")
DEFAULT_SHARD_SIZE_MB = 2000
# Where a standalone merge reads and writes (strategy=merge): not merge parameters, so never part of a
# cached merge's key.
IO_KEYS = ("base", "models", "output", "from_mergekit", "overwrite")
# Every other key the merge group may hold (conf/merge/_base.yaml and the method YAMLs); ``check_finite``
# and ``report_stats`` are switches for tests and sweeps, ``fisher_batches`` is read by the pipeline.
PARAM_KEYS = ("method", "weight", "weights", "density", "epsilon", "gamma", "lambda", "normalize", "rescale",
              "rescale_mode", "t", "seed", "dtype", "vocab_policy", "filter_wise", "fisher_paths", "fisher_floor",
              "fisher_batches", "max_base_distance", "shard_size_mb", "check_finite", "report_stats")


def check_known_keys(keys, known: Sequence[str], where: str) -> None:
    """Refuse a key that is not in ``known`` (a typo is silently ignored otherwise), suggesting the closest."""
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(sorted(known))}"
            raise ValueError(f"{where}{key} is not a known merge setting; {hint}")


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(float(x))


def resolve_weights(merge_cfg: Mapping[str, Any], n_models: int) -> list[float]:
    """One weight per specialist: ``weights`` when given, else ``weight`` w -> [w, 1-w] for two models
    (the study's codegen:codesum ratio), or w for each model otherwise."""
    if n_models < 1:
        raise ValueError("merge needs at least one specialist model (got 0)")
    weights = merge_cfg.get("weights")
    if weights is not None:
        weights = list(weights)
        if len(weights) != n_models:
            raise ValueError(f"merge.weights has {len(weights)} values but there are {n_models} models; "
                             f"give one weight per model")
        for i, w in enumerate(weights):
            if not _is_number(w):
                raise ValueError(f"merge.weights[{i}]={w!r} is not a finite number")
        return [float(w) for w in weights]
    w = merge_cfg.get("weight", 0.5)
    if isinstance(w, Sequence) and not isinstance(w, str):
        raise ValueError(f"merge.weight={list(w)!r} is a list; use merge.weights=[...] for per-model weights")
    if not _is_number(w):
        raise ValueError(f"merge.weight={w!r} is not a finite number")
    if n_models == 2:
        if not 0 <= float(w) <= 1:
            raise ValueError(f"merge.weight={w} is outside [0, 1]; with two models it means codegen w, "
                             f"codesum 1-w (use merge.weights=[...] for other weightings)")
        return [float(w), 1.0 - float(w)]
    return [float(w)] * n_models


def _per_model(merge_cfg: Mapping[str, Any], key: str, n_models: int, default: float) -> list[float]:
    value = merge_cfg.get(key)
    if value is None:
        return [default] * n_models
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value] * n_models
    if len(values) != n_models:
        raise ValueError(f"merge.{key} has {len(values)} values but there are {n_models} models")
    for v in values:
        if not _is_number(v):
            raise ValueError(f"merge.{key}={value!r} is not a finite number (or one per model)")
    return [float(v) for v in values]


@dataclass(frozen=True)
class TSchedule:
    """SLERP's t: a number, a gradient over layers (list), or filtered rules [{filter, value}, ...]."""

    rules: tuple[tuple[str | None, tuple[float, ...]], ...]

    def at(self, tensor_name: str, n_layers: int) -> float:
        for pattern, values in self.rules:
            if pattern in (None, "*") or pattern in tensor_name:
                return _gradient_value(values, tensor_name, n_layers)
        return 0.5


def _gradient_value(values: tuple[float, ...], tensor_name: str, n_layers: int) -> float:
    """mergekit-style gradient: values spread evenly over the layers, linearly interpolated; tensors
    outside the layer stack take the first value (embeddings) or the last (final norm, lm_head)."""
    if len(values) == 1:
        return values[0]
    layer = layer_index(tensor_name)
    if layer is None:
        return values[0] if "embed" in tensor_name else values[-1]
    pos = layer / max(n_layers - 1, 1) * (len(values) - 1)
    lo = min(int(math.floor(pos)), len(values) - 2)
    frac = pos - lo
    return values[lo] * (1 - frac) + values[lo + 1] * frac


def parse_t(t: Any) -> TSchedule:
    def as_values(v: Any) -> tuple[float, ...]:
        vals = list(v) if isinstance(v, Sequence) and not isinstance(v, str) else [v]
        if not vals or not all(_is_number(x) and 0 <= float(x) <= 1 for x in vals):
            raise ValueError(f"merge.t={t!r}: every t must be a number in [0, 1]")
        return tuple(float(x) for x in vals)

    if isinstance(t, Sequence) and not isinstance(t, str) and t and all(isinstance(x, Mapping) for x in t):
        rules = []
        for rule in t:
            if "value" not in rule:
                raise ValueError(f"merge.t rule {dict(rule)!r} has no 'value'")
            rules.append((rule.get("filter"), as_values(rule["value"])))
        return TSchedule(tuple(rules))
    return TSchedule(((None, as_values(0.5 if t is None else t)),))


@dataclass(frozen=True)
class MergeParams:
    method: MergeMethod
    weights: list[float]
    densities: list[float]
    epsilons: list[float]
    gammas: list[float]
    lam: float
    normalize: bool
    rescale: str | None  # None, "l1" or "inverse_prob"
    t: TSchedule
    seed: int
    dtype: str | None
    filter_wise: bool = False
    fisher_floor: float = 1e-6
    vocab_policy: str = "strict"
    fisher_paths: tuple[str, ...] | None = None  # one Fisher folder per model (method fisher)
    max_base_distance: float | None = 0.5  # relative L2 above which a base is refused; None: not checked
    shard_size_mb: float = DEFAULT_SHARD_SIZE_MB
    check_finite: bool = True
    report_stats: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def require_fisher_paths(self, n_models: int) -> tuple[str, ...]:
        """The Fisher folders, one per model, or the error that says how to get them."""
        paths = self.fisher_paths
        if not paths or len(paths) != n_models:
            raise ValueError(f"merge.method=fisher needs merge.fisher_paths with one Fisher folder per model "
                             f"({n_models}); got {paths!r} (compute them with mixmerge.merge.fisher)")
        return paths

    def as_report(self) -> dict[str, Any]:
        return {"method": self.method.name, "weights": self.weights, "density": self.densities,
                "epsilon": self.epsilons, "gamma": self.gammas, "lambda": self.lam,
                "normalize": self.normalize, "rescale": self.rescale, "t": [list(r[1]) for r in self.t.rules],
                "seed": self.seed, "dtype": self.dtype, "vocab_policy": self.vocab_policy}


def resolve_params(merge_cfg: Mapping[str, Any] | MergeParams, n_models: int) -> MergeParams:
    """Validate ``merge_cfg`` for ``n_models`` specialists and resolve every default (a ``MergeParams``
    already resolved is checked against ``n_models`` and returned as is)."""
    if isinstance(merge_cfg, MergeParams):
        if len(merge_cfg.weights) != n_models:
            raise ValueError(f"the merge parameters were resolved for {len(merge_cfg.weights)} models, "
                             f"not {n_models}")
        return merge_cfg
    check_known_keys(merge_cfg, (*PARAM_KEYS, *IO_KEYS), "merge.")
    if "method" not in merge_cfg or merge_cfg["method"] is None:
        raise ValueError("merge.method is missing; pick one of the files in conf/merge/ (e.g. merge=ties)")
    method = get_method(str(merge_cfg["method"]))
    if n_models < method.min_models:
        raise ValueError(f"merge.method={method.name} needs at least {method.min_models} specialist models, "
                         f"got {n_models}")
    if method.max_models is not None and n_models > method.max_models:
        raise ValueError(f"merge.method={method.name} merges exactly {method.max_models} models, got {n_models}")
    weights = resolve_weights(merge_cfg, n_models)
    densities = _per_model(merge_cfg, "density", n_models, 1.0)
    epsilons = _per_model(merge_cfg, "epsilon", n_models, method.default_epsilon)
    gammas = _per_model(merge_cfg, "gamma", n_models, method.default_gamma)
    for i, d in enumerate(densities):
        if not 0 < d <= 1:
            raise ValueError(f"merge.density={d} (model {i}) is outside (0, 1]; density is the fraction of "
                             f"each task vector that is kept")
    for i, (d, e) in enumerate(zip(densities, epsilons, strict=True)):
        if e < 0:
            raise ValueError(f"merge.epsilon={e} (model {i}) is negative")
        if method.sparsify == "della" and d < 1 and not (d - e > 0 and d + e <= 1):
            raise ValueError(f"merge.epsilon={e} with merge.density={d} (model {i}) gives keep probabilities "
                             f"outside (0, 1]; choose epsilon < min(density, 1 - density)")
    for i, g in enumerate(gammas):
        if not 0 <= g < 1:
            raise ValueError(f"merge.gamma={g} (model {i}) is outside [0, 1)")
    lam = merge_cfg.get("lambda", 1.0)
    lam = 1.0 if lam is None else lam
    if not _is_number(lam):
        raise ValueError(f"merge.lambda={lam!r} is not a finite number")
    normalize = merge_cfg.get("normalize")
    normalize = method.default_normalize if normalize is None else normalize
    if not isinstance(normalize, bool):
        raise ValueError(f"merge.normalize={normalize!r} must be true, false or null (the method's default)")
    rescale = merge_cfg.get("rescale")
    rescale = method.default_rescale if rescale is None else rescale
    if not isinstance(rescale, bool):
        raise ValueError(f"merge.rescale={rescale!r} must be true, false or null (the method's default)")
    mode = merge_cfg.get("rescale_mode") or "l1"
    if mode not in RESCALE_MODES:
        raise ValueError(f"merge.rescale_mode={mode!r} is not one of {RESCALE_MODES} "
                         f"(l1 = mergekit's norm matching, inverse_prob = the DARE/DELLA papers' 1/p)")
    seed = merge_cfg.get("seed", 0)
    seed = 0 if seed is None else seed
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"merge.seed={seed!r} must be an integer")
    dtype = merge_cfg.get("dtype")
    if dtype is not None and dtype not in DTYPE_NAMES:
        raise ValueError(f"merge.dtype={dtype!r} is not one of {DTYPE_NAMES} (or null for the base's dtype)")
    vocab_policy = merge_cfg.get("vocab_policy") or "strict"
    if vocab_policy not in VOCAB_POLICIES:
        raise ValueError(f"merge.vocab_policy={vocab_policy!r} is not one of {VOCAB_POLICIES}")
    fisher_paths = merge_cfg.get("fisher_paths")
    if fisher_paths is not None and len(fisher_paths) != n_models:
        raise ValueError(f"merge.fisher_paths has {len(fisher_paths)} folders but there are {n_models} models")
    floor = merge_cfg.get("fisher_floor", 1e-6)
    floor = 1e-6 if floor is None else floor
    if not _is_number(floor) or floor < 0:
        raise ValueError(f"merge.fisher_floor={floor!r} must be a non-negative number")
    shard_mb = merge_cfg.get("shard_size_mb")
    shard_mb = DEFAULT_SHARD_SIZE_MB if shard_mb is None else shard_mb
    if not _is_number(shard_mb) or shard_mb <= 0:
        raise ValueError(f"merge.shard_size_mb={shard_mb!r} must be a positive number of megabytes per output "
                         f"file (e.g. merge.shard_size_mb={DEFAULT_SHARD_SIZE_MB})")
    max_dist = merge_cfg.get("max_base_distance", 0.5)
    if max_dist is not None and (not _is_number(max_dist) or max_dist < 0):
        raise ValueError(f"merge.max_base_distance={max_dist!r} must be a non-negative number (or null to skip "
                         f"the check)")
    return MergeParams(
        method=method, weights=weights, densities=densities, epsilons=epsilons, gammas=gammas,
        lam=float(lam), normalize=normalize, rescale=mode if rescale else None, t=parse_t(merge_cfg.get("t")),
        seed=seed, dtype=dtype, filter_wise=bool(merge_cfg.get("filter_wise", False)),
        fisher_floor=float(floor), vocab_policy=vocab_policy,
        fisher_paths=None if fisher_paths is None else tuple(str(p) for p in fisher_paths),
        max_base_distance=None if max_dist is None else float(max_dist), shard_size_mb=float(shard_mb),
        check_finite=merge_cfg.get("check_finite", True) is not False,
        report_stats=bool(merge_cfg.get("report_stats", False)),
    )
