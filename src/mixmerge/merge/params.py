"""Merge config -> resolved, validated parameters (pure: no files).

Per-model parameters (``weight``/``weights``, ``density``, ``epsilon``, ``gamma``) take a number for
all models or a list with one value per model; global ones (``lambda``, ``normalize``, ``rescale``)
take one value. A model's entry (and ``lambda``, ``t``) may also vary by tensor, as mergekit's settings
do: a layer gradient (a list of numbers) or filter rules (``[{filter, value}, ...]``), a ``Schedule``
that ``MergeParams.for_tensor`` evaluates per tensor (the mergekit reader writes them). ``normalize``/
``rescale`` left null use the method's default (mergekit's, in its registry row). The edge resolves a
config once (``resolve_params``) and passes the ``MergeParams`` down; the engines call ``for_tensor``.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from mixmerge.dtypes import DTYPE_NAMES
from mixmerge.merge.common import RESCALE_MODES, weight_divisor
from mixmerge.merge.correlation_rule import RULE_KEYS, CorrelationRule, resolve_correlation_rule
from mixmerge.merge.method_options import (
    OPTION_KEYS,
    OPTIONS,
    SCHEDULED_OPTIONS,
    check_option,
    foreign_option,
    owner_of,
)
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
              "rescale_mode", "t", "seed", "dtype", "out_dtype", "vocab_policy", "filter_wise", "fisher_paths", "fisher_floor",
              "fisher_batches", "max_base_distance", "shard_size_mb", "check_finite", "report_stats",
              *RULE_KEYS)  # merge=correlation's knobs (correlation_rule.py)
PARAM_KEYS = (*PARAM_KEYS, *OPTION_KEYS)  # the settings of SCE, NuSLERP, Multi-SLERP, Karcher (method_options.py)
# LoRA-native merging (merge/lora_engine.py): write the merge as a peft adapter of a chosen rank.
PARAM_KEYS += ("output_format", "adapter_rank")
OUTPUT_FORMATS = ("model", "adapter")
# RegMean / RegMean++ (merge/regmean.py): the off-diagonal scale, the Gram folders, the batches that estimate them
PARAM_KEYS += ("alpha", "gram_paths", "gram_batches")
PARAM_KEYS = (*PARAM_KEYS, "tsv_rank_fraction", "common_space_fraction")  # the SVD merges (svd_merge.py)


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
        return [as_number(w, f"merge.weights[{i}]") for i, w in enumerate(weights)]
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


def as_number(x: Any, where: str) -> float:
    """A finite number; a YAML string such as ``8e-1`` (PyYAML reads exponents without a dot as strings,
    and mergekit accepts them) counts as its value."""
    if isinstance(x, str):
        try:
            x = float(x)
        except ValueError:
            raise ValueError(f"{where}={x!r} is not a number") from None
    if not _is_number(x):
        raise ValueError(f"{where}={x!r} is not a finite number")
    return float(x)


def _is_setting(v: Any) -> bool:
    """A layer gradient (list of numbers) or filter rules (list of {filter, value}): not one number."""
    return isinstance(v, Sequence) and not isinstance(v, str)


def _per_model(merge_cfg: Mapping[str, Any], key: str, n_models: int, default: float
               ) -> tuple[list[float], list[tuple[int, Schedule]]]:
    """One value per model, and the models whose value varies by tensor (an entry that is a gradient
    or filter rules, as the mergekit reader writes them): their Schedule, with its first value as the
    list's placeholder (``MergeParams.for_tensor`` puts in each tensor's own)."""
    value = merge_cfg.get(key)
    if value is None:
        return [default] * n_models, []
    values = list(value) if _is_setting(value) else [value] * n_models
    if len(values) != n_models:
        raise ValueError(f"merge.{key} has {len(values)} values but there are {n_models} models")
    numbers, schedules = [], []
    for i, v in enumerate(values):
        if _is_setting(v):
            sched = parse_setting(v, f"merge.{key}[{i}]")
            if not sched.has_fallback():
                raise ValueError(f"merge.{key}[{i}]={v!r}: no rule without a filter, so tensors no filter matches "
                                 f"have no {key}; add a last rule {{value: X}}")
            schedules.append((i, sched))
            numbers.append(sched.values()[0])
        else:
            numbers.append(as_number(v, f"merge.{key}" if not _is_setting(value) else f"merge.{key}[{i}]"))
    return numbers, schedules


@dataclass(frozen=True)
class Schedule:
    """A parameter that varies by tensor, as mergekit reads its settings (mergekit/config.py,
    ``evaluate_setting``): rules ``(filter, values)`` tried in order; the first whose filter is None,
    ``*`` or a substring of the tensor name gives the value; several values are a gradient over the
    layer stack."""

    rules: tuple[tuple[str | None, tuple[float, ...]], ...]

    def at(self, tensor_name: str, n_layers: int) -> float:
        for pattern, values in self.rules:
            if pattern in (None, "*") or pattern in tensor_name:
                return _gradient_value(values, tensor_name, n_layers)
        raise ValueError(f"no rule of {self.rules!r} matches tensor {tensor_name!r}")

    def values(self) -> list[float]:
        return [v for _, values in self.rules for v in values]

    def has_fallback(self) -> bool:
        """A rule that matches every tensor (no filter): mergekit fails on a tensor no rule matches."""
        return any(pattern in (None, "*") for pattern, _ in self.rules)


TSchedule = Schedule  # SLERP's t: the first Schedule this module had


def _gradient_value(values: tuple[float, ...], tensor_name: str, n_layers: int) -> float:
    """mergekit's gradient (mergekit/config.py ``evaluate_setting``, mergekit/plan.py): layer i of n sits
    at t = i / (n - 1) (t = 1 when n = 1), tensors outside the layer stack (embeddings, final norm,
    lm_head) at t = 0; the value is interpolated linearly between the two nearest list entries."""
    if len(values) == 1:
        return values[0]
    layer = layer_index(tensor_name)
    t = 0.0 if layer is None else layer / (n_layers - 1) if n_layers > 1 else 1.0
    scaled = t * (len(values) - 1)
    i0 = int(scaled)
    i1 = min(len(values) - 1, i0 + 1)
    frac = scaled - i0
    return (1 - frac) * values[i0] + frac * values[i1]


def parse_setting(v: Any, where: str) -> Schedule:
    """A number, a gradient (list of numbers) or filter rules ([{filter, value}, ...]) as a Schedule."""
    def as_values(x: Any) -> tuple[float, ...]:
        vals = list(x) if _is_setting(x) else [x]
        if not vals:
            raise ValueError(f"{where}={v!r}: an empty list has no value")
        return tuple(as_number(e, where) for e in vals)

    if _is_setting(v) and v and all(isinstance(x, Mapping) for x in v):
        rules = []
        for rule in v:
            check_known_keys(rule, ("filter", "value"), f"{where} rule ")
            if "value" not in rule:
                raise ValueError(f"{where} rule {dict(rule)!r} has no 'value'")
            rules.append((rule.get("filter"), as_values(rule["value"])))
        return Schedule(tuple(rules))
    if _is_setting(v) and any(isinstance(x, Mapping) for x in v):
        raise ValueError(f"{where}={v!r} mixes filter rules and numbers")
    return Schedule(((None, as_values(v)),))


def parse_t(t: Any, *, unit_interval: bool = True) -> Schedule:
    """SLERP's interpolation t in [0, 1] (default 0.5), or NearSwap's distance threshold (any number)."""
    sched = parse_setting(0.5 if t is None else t, "merge.t")
    if unit_interval and not all(0 <= x <= 1 for x in sched.values()):
        raise ValueError(f"merge.t={t!r}: every t must be a number in [0, 1]")
    if not sched.has_fallback():
        # mergekit/config.py: a filter list no rule of which matches a tensor gives no t, and slerp's t
        # is required ("Missing required parameter t").
        raise ValueError(f"merge.t={t!r}: no rule without a filter, so tensors no filter matches have no t; "
                         f"add a last rule {{value: X}}")
    return sched


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
    dtype: str | None  # the compute dtype (mergekit's meaning; None: float32), also the output's unless out_dtype
    filter_wise: bool = False
    fisher_floor: float = 1e-6
    vocab_policy: str = "strict"
    fisher_paths: tuple[str, ...] | None = None  # one Fisher folder per model (method fisher)
    max_base_distance: float | None = 0.5  # relative L2 above which a base is refused; None: not checked
    shard_size_mb: float = DEFAULT_SHARD_SIZE_MB
    check_finite: bool = True
    report_stats: bool = False
    out_dtype: str | None = None  # the merged tensors' dtype (mergekit's out_dtype); None: dtype, else the base's
    alpha: float = 0.9  # RegMean's scale of the Gram matrices' off-diagonal entries
    gram_paths: tuple[str, ...] | None = None  # one Gram folder per model (methods regmean, regmean_plus)
    extra: dict[str, Any] = field(default_factory=dict)
    # Parameters that vary by tensor (mergekit layer gradients and filters): (field, model index, schedule);
    # field is "weights", "densities", "epsilons", "gammas" (per model) or "lam" (index -1).
    schedules: tuple[tuple[str, int, Schedule], ...] = ()
    correlation: CorrelationRule | None = None  # merge=correlation's knobs (None for other methods)
    output_format: str = "model"  # "adapter": a peft LoRA of the merged ΔW (all models LoRA adapters of the base)
    adapter_rank: int | None = None  # the adapter's rank; None: each module's exact rank (no truncation)
    # The method's own settings (method_options.OPTIONS: select_topk, nuslerp_flatten, ...), every one resolved
    # to its value or default; select_topk as a Schedule (it may vary by tensor).
    options: dict[str, Any] = field(default_factory=dict)
    tsv_rank_fraction: float | None = None  # TSV-M: share of each matrix's rank kept per task; None: 1/T (the paper's)
    common_space_fraction: float | None = None  # Iso-CTS: share of the rank from the summed task matrices

    def for_tensor(self, tensor_name: str, n_layers: int) -> MergeParams:
        """The parameters of one tensor: every scheduled value evaluated at its layer (and filters)."""
        if not self.schedules:
            return self
        lists = {f: list(getattr(self, f)) for f in ("weights", "densities", "epsilons", "gammas")}
        lam = self.lam
        for name, i, sched in self.schedules:
            value = sched.at(tensor_name, n_layers)
            if name == "lam":
                lam = value
            else:
                lists[name][i] = value
        return replace(self, **lists, lam=lam, schedules=())

    def require_fisher_paths(self, n_models: int) -> tuple[str, ...]:
        """The Fisher folders, one per model, or the error that says how to get them."""
        paths = self.fisher_paths
        if not paths or len(paths) != n_models:
            raise ValueError(f"merge.method=fisher needs merge.fisher_paths with one Fisher folder per model "
                             f"({n_models}); got {paths!r} (compute them with mixmerge.merge.fisher)")
        return paths

    def require_gram_paths(self, n_models: int) -> tuple[str, ...]:
        """The Gram folders, one per model, or the error that says what they are and how to get them."""
        paths = self.gram_paths
        if not paths or len(paths) != n_models:
            raise ValueError(
                f"merge.method={self.method.name} needs merge.gram_paths with one folder of Gram matrices per model "
                f"({n_models}), each of that model's linear-layer inputs on its own task data; got {paths!r}. Compute "
                f"them with mixmerge.merge.gram.compute_grams"
                f"{' (RegMean++: compute_regmean_plus_grams)' if self.method.name == 'regmean_plus' else ''}, or run "
                f"strategy=compare, which computes and caches them from the specialists' training data")
        return paths

    def as_report(self) -> dict[str, Any]:
        return {"method": self.method.name, "weights": self.weights, "density": self.densities,
                "epsilon": self.epsilons, "gamma": self.gammas, "lambda": self.lam,
                "normalize": self.normalize, "rescale": self.rescale, "t": [list(r[1]) for r in self.t.rules],
                "seed": self.seed, "dtype": self.dtype, "out_dtype": self.out_dtype, "vocab_policy": self.vocab_policy,
                **({"tsv_rank_fraction": self.tsv_rank_fraction, "common_space_fraction": self.common_space_fraction}
                   if self.method.svd_based else {}),
                **({"by_tensor": {f"{name}[{i}]" if i >= 0 else name: [[p, list(v)] for p, v in s.rules]
                                  for name, i, s in self.schedules}} if self.schedules else {}),
                **({"correlation": self.correlation.as_report()} if self.correlation is not None else {}),
                **{k: ([[p, list(v)] for p, v in o.rules] if isinstance(o, Schedule) else o)
                   for k, o in self.options.items()}}


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
    schedules: list[tuple[str, int, Schedule]] = []
    if any(_is_setting(w) for w in (merge_cfg.get("weights") or [])):
        weights, scheduled = _per_model(merge_cfg, "weights", n_models, 1.0)
        schedules += [("weights", i, s) for i, s in scheduled]
    else:
        weights = resolve_weights(merge_cfg, n_models)
    densities, scheduled = _per_model(merge_cfg, "density", n_models, 1.0)
    schedules += [("densities", i, s) for i, s in scheduled]
    epsilons, scheduled = _per_model(merge_cfg, "epsilon", n_models, method.default_epsilon)
    schedules += [("epsilons", i, s) for i, s in scheduled]
    gammas, scheduled = _per_model(merge_cfg, "gamma", n_models, method.default_gamma)
    schedules += [("gammas", i, s) for i, s in scheduled]

    def every(name: str, values: list[float]) -> list[list[float]]:
        """Each model's possible values: its number, or every value of its schedule."""
        out = [[v] for v in values]
        for f, i, sched in schedules:
            if f == name:
                out[i] = sched.values()
        return out

    for i, ds in enumerate(every("densities", densities)):
        for d in ds:
            if not 0 < d <= 1:
                raise ValueError(f"merge.density={d} (model {i}) is outside (0, 1]; density is the fraction of "
                                 f"each task vector that is kept")
    for i, (ds, es) in enumerate(zip(every("densities", densities), every("epsilons", epsilons), strict=True)):
        for e in es:
            if e < 0:
                raise ValueError(f"merge.epsilon={e} (model {i}) is negative")
            for d in ds:
                # mergekit/sparsify.py (della_magprune) refuses density +/- epsilon outside the open (0, 1)
                if method.sparsify == "della" and d < 1 and not (d - e > 0 and d + e < 1):
                    raise ValueError(f"merge.epsilon={e} with merge.density={d} (model {i}) gives keep "
                                     f"probabilities outside (0, 1) (mergekit refuses it too); choose "
                                     f"epsilon < min(density, 1 - density)")
    for i, gs in enumerate(every("gammas", gammas)):
        for g in gs:
            if not 0 <= g < 1:
                raise ValueError(f"merge.gamma={g} (model {i}) is outside [0, 1)")
    correlation = resolve_correlation_rule(merge_cfg, method.kind, [w for ws in every("weights", weights) for w in ws])
    lam_cfg = merge_cfg.get("lambda", 1.0)
    lam_cfg = 1.0 if lam_cfg is None else lam_cfg
    if _is_setting(lam_cfg):
        lam_sched = parse_setting(lam_cfg, "merge.lambda")
        schedules.append(("lam", -1, lam_sched))
        lam = lam_sched.values()[0]
    else:
        lam = as_number(lam_cfg, "merge.lambda")
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
    out_dtype = merge_cfg.get("out_dtype")
    if out_dtype is not None and out_dtype not in DTYPE_NAMES:
        raise ValueError(f"merge.out_dtype={out_dtype!r} is not one of {DTYPE_NAMES} (or null for merge.dtype, "
                         f"else the base's dtype)")
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
    output_format, adapter_rank = _resolve_output_format(merge_cfg)
    alpha, gram_paths = _regmean_settings(merge_cfg, method, weights, n_models)
    rank_fraction, common_fraction = _svd_settings(merge_cfg, method, n_models, every("weights", weights))
    params = MergeParams(
        output_format=output_format, adapter_rank=adapter_rank, alpha=alpha, gram_paths=gram_paths,
        tsv_rank_fraction=rank_fraction, common_space_fraction=common_fraction,
        method=method, weights=weights, densities=densities, epsilons=epsilons, gammas=gammas,
        lam=float(lam), normalize=normalize, rescale=mode if rescale else None,
        t=parse_t(merge_cfg.get("t"), unit_interval=method.kind != "nearswap"),
        seed=seed, dtype=dtype, filter_wise=bool(merge_cfg.get("filter_wise", False)),
        fisher_floor=float(floor), vocab_policy=vocab_policy,
        fisher_paths=None if fisher_paths is None else tuple(str(p) for p in fisher_paths),
        max_base_distance=None if max_dist is None else float(max_dist), shard_size_mb=float(shard_mb),
        check_finite=merge_cfg.get("check_finite", True) is not False,
        report_stats=bool(merge_cfg.get("report_stats", False)), schedules=tuple(schedules),
        out_dtype=out_dtype, correlation=correlation, options=resolve_method_options(merge_cfg, method),
    )
    check_output_format(params)
    return params


def delta_space_problem(params: MergeParams) -> str | None:
    """Why ``params`` cannot be merged on the ΔW alone (None when it can): the methods that need the base
    weights themselves (slerp, model_stock, fisher) and linear without ``normalize``, whose result
    Σ w_i θ_i = (Σ w_i) base + Σ w_i ΔW_i is not the base plus a low-rank change unless Σ w_i = 1."""
    kind = params.method.kind
    if kind == "gta":
        return None
    if kind == "linear":
        fix = "set merge.normalize=true (or give weights that sum to 1)"
        if params.schedules:  # per-tensor weights: each tensor's are checked again in merge_deltas
            return None if params.normalize else f"linear scales the base by sum(weights); {fix}"
        total = float(sum(params.weights))
        if math.isclose(total / weight_divisor(params.weights, params.normalize), 1.0):
            return None
        return f"linear with weights summing to {total:g} scales the base by that sum; {fix}"
    return f"merge.method={params.method.name} combines whole weights, not task vectors"


def _resolve_output_format(merge_cfg: Mapping[str, Any]) -> tuple[str, int | None]:
    """``merge.output_format`` and ``merge.adapter_rank``, checked (the method's fit is checked once the
    parameters are resolved: ``check_output_format``)."""
    fmt = merge_cfg.get("output_format") or "model"
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"merge.output_format={fmt!r} is not one of {OUTPUT_FORMATS} (model: full weights; "
                         f"adapter: a peft LoRA of the merged change, when every model is a LoRA adapter)")
    rank = merge_cfg.get("adapter_rank")
    if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 1):
        raise ValueError(f"merge.adapter_rank={rank!r} must be a positive integer, or null for each module's "
                         f"exact rank")
    if rank is not None and fmt != "adapter":
        raise ValueError(f"merge.adapter_rank={rank} only applies to merge.output_format=adapter; set that, or "
                         f"drop merge.adapter_rank")
    return fmt, rank


def check_output_format(params: MergeParams) -> None:
    """Refuse ``merge.output_format=adapter`` for a method that is not a function of the task vectors."""
    if params.output_format == "adapter":
        problem = delta_space_problem(params)
        if problem is not None:
            raise ValueError(f"merge.output_format=adapter: {problem}. An adapter holds the merged change "
                             f"ΔW, so it needs linear (normalized) or a task-vector method; or use "
                             f"merge.output_format=model")




def resolve_method_options(merge_cfg: Mapping[str, Any], method: MergeMethod) -> dict[str, Any]:
    """The method's own settings (``method_options.OPTIONS``) checked, defaults filled in; another method's
    setting given a value is refused (it would be silently unused), and NearSwap requires ``t``."""
    given = [k for k in OPTION_KEYS if merge_cfg.get(k) is not None]
    foreign = foreign_option(given, method.name)
    if foreign is not None:
        raise ValueError(f"merge.{foreign} is a setting of merge.method={owner_of(foreign)}; "
                         f"merge.method={method.name} does not read it (remove it)")
    if method.kind == "nearswap" and merge_cfg.get("t") is None:
        raise ValueError("merge.method=nearswap needs merge.t, the distance below which model 1's value is taken "
                         "(mergekit requires it; e.g. merge.t=0.0001)")
    options: dict[str, Any] = {}
    for opt in OPTIONS.get(method.name, ()):
        value = merge_cfg.get(opt.key)
        value = opt.default if value is None else value
        if opt.key in SCHEDULED_OPTIONS:
            sched = parse_setting(value, f"merge.{opt.key}")
            if not sched.has_fallback():
                raise ValueError(f"merge.{opt.key}={value!r}: no rule without a filter, so tensors no filter "
                                 f"matches have no {opt.key}; add a last rule {{value: X}}")
            for v in sched.values():
                check_option(opt, v, method.name)
            options[opt.key] = sched
        elif _is_setting(value):
            raise ValueError(f"merge.{opt.key}={value!r}: a gradient or filter rules of {opt.key} are not "
                             f"supported; give one value")
        else:
            options[opt.key] = check_option(opt, value, method.name)
    return options


def _regmean_settings(merge_cfg: Mapping[str, Any], method: MergeMethod, weights: list[float], n_models: int
                      ) -> tuple[float, tuple[str, ...] | None]:
    """``merge.alpha`` in [0, 1] and ``merge.gram_paths`` (one per model); RegMean's weights non-negative."""
    alpha = merge_cfg.get("alpha")
    alpha = 0.9 if alpha is None else as_number(alpha, "merge.alpha")
    if not 0 <= alpha <= 1:
        raise ValueError(f"merge.alpha={alpha} is outside [0, 1]; RegMean scales the Gram matrices' off-diagonal "
                         f"entries by it (1: the plain regression, 0: only the diagonal)")
    paths = merge_cfg.get("gram_paths")
    if paths is not None and (isinstance(paths, str) or len(paths) != n_models):
        raise ValueError(f"merge.gram_paths={paths!r} must list one Gram folder per model ({n_models})")
    batches = merge_cfg.get("gram_batches")
    if batches is not None and (not isinstance(batches, int) or isinstance(batches, bool) or batches < 1):
        raise ValueError(f"merge.gram_batches={batches!r} must be a positive integer (batches of each specialist's "
                         f"task data that estimate its Grams), e.g. merge.gram_batches=32")
    if method.kind == "regmean" and (any(w < 0 for w in weights) or sum(weights) <= 0):
        raise ValueError(f"merge.weights={weights} for {method.name} must be non-negative with a positive sum "
                         f"(they weight each specialist's squared error)")
    return float(alpha), None if paths is None else tuple(str(p) for p in paths)


def _svd_settings(merge_cfg: Mapping[str, Any], method: MergeMethod, n_models: int,
                  weight_values: list[list[float]]) -> tuple[float | None, float | None]:
    """``tsv_rank_fraction`` and ``common_space_fraction`` checked, and what the SVD merges (TSV-M, Iso-C,
    Iso-CTS; svd_merge.py) cannot take refused, each error naming its key."""
    rank_fraction, common = merge_cfg.get("tsv_rank_fraction"), merge_cfg.get("common_space_fraction")
    for key, value, owner in (("tsv_rank_fraction", rank_fraction, "tsv"), ("common_space_fraction", common, "iso_cts")):
        if value is not None and method.name != owner:
            raise ValueError(f"merge.{key} is a setting of merge.method={owner}, not of {method.name}; remove it")
    if not method.svd_based:
        return None, None
    for key in ("density", "epsilon", "gamma"):
        if merge_cfg.get(key) is not None:
            raise ValueError(f"merge.{key} is not a parameter of merge.method={method.name} (it keeps singular "
                             f"directions of whole matrices, not entries); remove it")
    if merge_cfg.get("normalize") is False:
        raise ValueError(f"merge.normalize=false: merge.method={method.name} always takes the weights as the "
                         f"tasks' shares (task t's matrix enters as T w_t / sum w); scale the merge with merge.lambda")
    if merge_cfg.get("rescale") is True:
        raise ValueError(f"merge.rescale=true: merge.method={method.name} drops no entries, so nothing is rescaled; "
                         f"remove it")
    for i, values in enumerate(weight_values):
        if any(w < 0 for w in values):
            raise ValueError(f"merge.weights[{i}]={values} is negative; merge.method={method.name} takes the weights "
                             f"as the tasks' shares of the merge (non-negative, positive sum)")
    if not sum(values[0] for values in weight_values) > 0:
        raise ValueError(f"merge.weights sum to 0; merge.method={method.name} takes them as the tasks' shares (give "
                         f"a positive sum)")
    if rank_fraction is not None:
        rank_fraction = as_number(rank_fraction, "merge.tsv_rank_fraction")
        if not 0 < rank_fraction <= 1 / n_models + 1e-12:
            raise ValueError(f"merge.tsv_rank_fraction={rank_fraction} is outside (0, 1/{n_models}]: each of the "
                             f"{n_models} tasks keeps that share of a matrix's singular directions, and together they "
                             f"must fit in its rank (null: 1/{n_models}, the paper's)")
    if method.default_common_space_fraction is None:
        return rank_fraction, None
    common = method.default_common_space_fraction if common is None else as_number(common,
                                                                                   "merge.common_space_fraction")
    if not 0 <= common <= 1:
        raise ValueError(f"merge.common_space_fraction={common} is outside [0, 1]: the share of each matrix's rank "
                         f"taken from the summed task matrices (1 gives Iso-C; the paper's 0.8)")
    return rank_fraction, common
