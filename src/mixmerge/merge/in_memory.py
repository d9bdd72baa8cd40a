"""In-memory merging for sweeps: base and task vectors stay resident (on the GPU when given one), and
each trial writes its merged weights straight into a live model; no disk round trip."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mixmerge.merge import fast_gta
from mixmerge.merge import kernels as K
from mixmerge.merge import svd_merge as SVD
from mixmerge.merge import validate as V
from mixmerge.merge.combine import (
    combine_sparse,
    merge_correlation,
    merge_whole,
    sparsify_stack,
    sparsity_key,
)
from mixmerge.merge.common import weight_divisor
from mixmerge.merge.correlation_merge import Measurement, measure
from mixmerge.merge.io import SafetensorsFolder, open_source
from mixmerge.merge.params import MergeParams, resolve_params


class InMemoryMerger:
    """Load once, merge many times: ``merger.merge_into(model, merge_cfg)`` per trial."""

    def __init__(self, base: str | Path, models: Sequence[str | Path], device: str | torch.device = "cpu",
                 *, cache_sparse: bool = True):
        """``cache_sparse`` keeps the last trial's sparsity plan (on a CPU: thresholds and, for DELLA, its
        survivors, one more copy of the deltas; on a GPU: the sparsified task vectors), so trials that
        change only weights, lambda or normalize skip the sparsification; and, on a CPU, DELLA's per-row
        ranks (2 bytes per entry), so a DELLA trial with a new density or epsilon skips the ranking."""
        self.device = torch.device(device)
        self.cache_sparse = cache_sparse
        self._sparse_key: tuple | None = None
        self._sparse: dict[str, Any] = {}  # tensor name -> plan (CPU) or sparsified task vectors (GPU)
        # DELLA's within-row ranks (int16 per entry) depend only on the task vectors: computed on the
        # first DELLA trial and reused by every later one, whatever its density, epsilon or seed.
        self._ranks: dict[str, list] = {}
        self._recycled: dict[str, fast_gta.SparsityPlan] = {}
        self.base_path = Path(base)
        self.model_paths = [Path(m) for m in models]
        V.check_architectures(self.base_path, self.model_paths, "strict")
        V.check_tokenizers(self.base_path, self.model_paths, "strict")
        base_src = SafetensorsFolder(self.base_path)
        sources = [open_source(m, base_src) for m in self.model_paths]
        labels = [f"model {i} ({m})" for i, m in enumerate(self.model_paths)]
        try:
            V.check_tensors(base_src, sources, labels, "strict")
            cfg = V.read_config(self.base_path) or {}
            self.n_layers = int(cfg.get("num_hidden_layers", 1) or 1)
            self.base: dict[str, torch.Tensor] = {}
            self.deltas: dict[str, torch.Tensor] = {}
            for name in base_src.names():
                b = base_src.get(name)
                if not b.is_floating_point():
                    continue
                V.check_finite(name, b, "merge.base")
                b32 = b.float().to(self.device)
                self.base[name] = b32
                row = torch.empty((len(sources), *b32.shape), dtype=torch.float32, device=self.device)
                for i, (src, label) in enumerate(zip(sources, labels, strict=True)):
                    t = src.get(name)
                    V.check_finite(name, t, label)
                    torch.sub(t.float().to(self.device), b32, out=row[i])
                self.deltas[name] = row  # (n_models, *shape): task vectors, one row per model
        finally:
            for s in [base_src, *sources]:
                s.close()
        self._fisher_cache: dict[tuple[str, ...], list[dict[str, torch.Tensor]]] = {}
        self._measured: dict[str, Measurement] = {}  # merge=correlation's per-tensor statistics
        self._tsv_cache: dict[str, tuple[float | None, SVD.TsvFactors]] = {}  # TSV-M: name -> (rank fraction, factors)

    def _fishers(self, paths: Sequence[str]) -> list[dict[str, torch.Tensor]]:
        key = tuple(str(p) for p in paths)
        if key not in self._fisher_cache:
            loaded = []
            for p in paths:
                folder = SafetensorsFolder(p)
                loaded.append({n: folder.get(n).float().to(self.device) for n in self.base if n in folder})
                folder.close()
            self._fisher_cache[key] = loaded
        return self._fisher_cache[key]

    def merged_tensors(self, params: MergeParams | Mapping[str, Any], *, with_stats: bool = False,
                       targets: Mapping[str, torch.Tensor] | None = None):
        """Yield ``(name, merged float32 tensor, stats)`` for every floating tensor. A merge computed
        straight into its float32 CPU target in ``targets`` yields None in place of the tensor."""
        params = resolve_params(params, len(self.model_paths))
        kind = params.method.kind
        fishers = self._fishers(params.require_fisher_paths(len(self.model_paths))) if kind == "fisher" else None
        if kind == "regmean":  # Grams read one tensor at a time (a 7B model's are tens of GB per specialist)
            yield from self._regmean_tensors(params)
            return
        cache = None
        fused = fast_gta.applies(params, self.device)
        if kind == "gta" and self.cache_sparse:
            key = sparsity_key(params)
            if self._sparse_key != key:  # on a CPU the old plans' DELLA survivors become the new plans' buffers
                self._recycled = self._sparse if fused else {}
                self._sparse_key, self._sparse = key, {}
            cache = self._sparse
        for name, base in self.base.items():
            deltas = self.deltas[name]
            tp = params.for_tensor(name, self.n_layers)  # layer gradients and filters evaluated here
            if fused:
                yield name, *self._merge_fused(name, base, deltas, tp, cache, (targets or {}).get(name))
                continue
            if params.method.svd_based:
                stats = None
                merged = SVD.svd_merge(kind, name, base, [base + d for d in deltas], tp.weights, tp.lam,
                                       rank_fraction=tp.tsv_rank_fraction, common_fraction=tp.common_space_fraction,
                                       factors=self._tsv_factors_of(name, base, deltas, tp))
            elif kind == "gta":
                stacked = cache.get(name) if cache is not None else None
                if stacked is None:
                    stacked = sparsify_stack(name, deltas, tp)
                    if cache is not None:
                        cache[name] = stacked
                stats = K.delta_stats(stacked) if with_stats else None
                merged = combine_sparse(base, stacked, tp)
            elif kind == "correlation":  # decided per tensor every trial (the knobs change it), measured once
                if name not in self._measured:  # the task vectors' statistics: once per merger, not per trial
                    self._measured[name] = measure(list(deltas))
                merged, stats = merge_correlation(base, deltas, tp, self._measured[name], with_stats)
            else:
                stats = None
                merged = merge_whole(name, base, [base + d for d in deltas], tp,
                                     fishers=None if fishers is None else [f[name] for f in fishers],
                                     n_layers=self.n_layers)
            yield name, merged, stats

    def _regmean_tensors(self, params: MergeParams):
        from mixmerge.merge.engine import open_grams

        paths = params.require_gram_paths(len(self.model_paths))
        with SafetensorsFolder(self.base_path) as base_src:
            grams = open_grams(paths, base_src)
        try:
            for name, base in self.base.items():
                per_model = [g.get(name).to(self.device) for g in grams] if name in grams[0] else None
                models = [base + d for d in self.deltas[name]]
                tp = params.for_tensor(name, self.n_layers)  # layer gradients and filters evaluated here
                yield name, merge_whole(name, base, models, tp, grams=per_model, n_layers=self.n_layers), None
        finally:
            for g in grams:
                g.close()


    def _tsv_factors_of(self, name, base, deltas, params):
        """TSV-M's singular vectors and values of one tensor (None for the other SVD merges and for tensors it
        leaves to task arithmetic): computed on the first trial and kept while the rank fraction stays, so
        later trials (new weights, lambda) only rescale and multiply."""
        if params.method.kind != "tsv" or not self.cache_sparse or not SVD.svd_applies(name, base.shape, len(deltas)):
            return None
        cached = self._tsv_cache.get(name)
        if cached is None or cached[0] != params.tsv_rank_fraction:
            cached = (params.tsv_rank_fraction, SVD.tsv_factors(list(deltas), params.tsv_rank_fraction))
            self._tsv_cache[name] = cached
        return cached[1]

    def _merge_fused(self, name, base, deltas, params, cache, target):
        """A task-vector method through the fused CPU kernels; the sparsity plan (thresholds, DELLA's
        survivors) is cached across trials that share densities, epsilons, seed and rescale."""
        flat_base = base.reshape(-1).numpy()
        rows = list(deltas.reshape(deltas.shape[0], -1).numpy())
        plan = cache.get(name) if cache is not None else None
        if plan is None:
            ranks = self._ranks.setdefault(name, [None] * len(rows)) if self.cache_sparse else None
            old = self._recycled.pop(name, None)
            scratch = old.survivors.reshape(-1) if old is not None and old.survivors is not None else None
            plan = fast_gta.plan_sparsity(name, flat_base, rows, params, is_delta=True, shape=tuple(base.shape),
                                          ranks=ranks, scratch=scratch)
            if cache is not None:
                cache[name] = plan
        direct = (target is not None and target.dtype == torch.float32 and target.device.type == "cpu"
                  and target.is_contiguous() and target.shape == base.shape)
        out = target.data.view(-1).numpy() if direct else None
        merged, stats, _, bad_out = fast_gta.merge_planned(flat_base, rows, plan, params, is_delta=True, out=out)
        if bad_out:
            raise ValueError(f"the merge of tensor {name!r} produced NaN/Inf; check merge.weights and merge.lambda")
        return (None if direct else torch.from_numpy(merged).view(base.shape)), stats

    @torch.no_grad()
    def merge_into(self, model: torch.nn.Module, params: MergeParams | Mapping[str, Any]) -> dict:
        """Overwrite ``model``'s weights with the merge of the resident specialists; return a report.
        ``params``: resolved once by the caller (``resolve_params``), or the merge config group."""
        t0 = time.perf_counter()
        targets = dict(model.state_dict(keep_vars=True))
        per_tensor = {}
        params = resolve_params(params, len(self.model_paths))
        with_stats = params.report_stats
        coefs = _affine_coefficients(params)
        merged_iter = (self._affine_tensors(coefs, targets) if coefs is not None
                       else self.merged_tensors(params, with_stats=with_stats, targets=targets))
        for name, merged, stats in merged_iter:
            if stats is not None and with_stats:
                per_tensor[name] = {"kept_fraction": stats.kept_fraction,
                                    "sign_conflict_rate": stats.sign_conflict_rate}
                per_tensor[name].update(stats.details())  # a method's own decisions (merge=correlation)
            if merged is None:  # already written in place
                continue
            if name not in targets:
                raise ValueError(f"missing tensor: the live model has no {name!r} (is it the same architecture "
                                 f"as merge.base {self.base_path}?)")
            target = targets[name]
            if tuple(target.shape) != tuple(merged.shape):
                raise ValueError(f"shape mismatch: tensor {name!r} is {tuple(target.shape)} in the live model but "
                                 f"{tuple(merged.shape)} in the merge")
            target.data.copy_(merged.to(device=target.device, dtype=target.dtype))
        return {"method": params.method.name, "parameters": params.as_report(), "per_tensor": per_tensor,
                "time_s": round(time.perf_counter() - t0, 4), "n_tensors": len(self.base)}

    def _affine_tensors(self, coefs: tuple[float, list[float]], targets: Mapping[str, torch.Tensor]):
        """Linear and task arithmetic are ``c0 * base + sum_i c_i * delta_i``: computed straight into
        float32 targets on the same device (1 + N passes, no temporaries), else into a new tensor."""
        c0, cs = coefs
        for name, base in self.base.items():
            target = targets.get(name)
            in_place = (target is not None and target.dtype == torch.float32 and target.device == base.device
                        and target.shape == base.shape)
            out = target.data if in_place else torch.empty_like(base)
            out.copy_(base)
            if c0 != 1.0:
                out.mul_(c0)
            for c, d in zip(cs, self.deltas[name], strict=True):
                out.add_(d, alpha=c)
            yield name, (None if in_place else out), None


def _affine_coefficients(params) -> tuple[float, list[float]] | None:
    """(c0, [c_i]) when the method is an affine map of base and task vectors, else None."""
    if params.schedules:  # weights or lambda that vary by layer: not one map for every tensor
        return None
    method, w = params.method, params.weights
    divisor = weight_divisor(w, params.normalize)
    if method.kind == "linear":  # sum_i w_i (base + delta_i) / divisor
        return float(sum(w)) / divisor, [x / divisor for x in w]
    if method.kind == "gta" and method.sparsify is None and method.consensus is None:
        return 1.0, [params.lam * x / divisor for x in w]
    return None
