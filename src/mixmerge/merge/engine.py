"""Streaming merge of HF folders: one tensor at a time from disk to disk.

Peak memory is the base tensor, one tensor per specialist and the result (all float32), whatever the
model size: inputs are memory-mapped, and outputs go straight into pre-headed shards (``io.py``). The
folder appears at ``out`` only when complete (temp folder + rename).

The task-vector methods and linear run on numpy arrays through the fused CPU kernels and never import
torch (about 1 s of the standalone command); the other methods, LoRA adapters, integer tensors and every
merge whose compute dtype (``merge.dtype``) is not float32 go through the torch reference (``combine.py``),
imported on first use: the fused kernels compute in float32 only.
"""

from __future__ import annotations

import json
import logging
import math
import resource
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mixmerge.dtypes import SAFETENSORS_NAMES
from mixmerge.files import publish_folder, temp_folder_beside, write_json_atomic
from mixmerge.merge import fast_gta
from mixmerge.merge import fused as F
from mixmerge.merge import validate as V
from mixmerge.merge.common import weight_divisor
from mixmerge.merge.io import (
    FLOAT_DTYPES,
    REPORT,
    SafetensorsFolder,
    StreamingShardWriter,
    copy_side_files,
    is_adapter_folder,
    open_source,
    torch_dtype_of,
    torch_name,
)
from mixmerge.merge.output import check_output, remove_stale_temporaries
from mixmerge.merge.params import MergeParams, resolve_params

log = logging.getLogger(__name__)


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _output_dtype(requested: str | None, base_cfg: Mapping[str, Any] | None) -> str:
    """The safetensors dtype of the merged float tensors: ``merge.out_dtype``, else ``merge.dtype`` (as
    mergekit, whose output stays in its compute dtype without out_dtype), else the base's, else F32."""
    if requested is not None:
        return SAFETENSORS_NAMES[requested]
    name = (base_cfg or {}).get("dtype") or (base_cfg or {}).get("torch_dtype") or "float32"
    return SAFETENSORS_NAMES.get(name, "F32")


def compute_dtype_name(params: MergeParams) -> str:
    """The dtype the merge computes in: ``merge.dtype`` (mergekit's meaning), float32 when it is null."""
    return params.dtype or "float32"


def merge_folders(merge_cfg: Mapping[str, Any] | MergeParams, base: Path | None, models: Sequence[Path], out: Path,
                  *, overwrite: bool = False) -> dict:
    """Merge the specialists ``models`` (HF folders or peft LoRA adapters) of ``base`` into ``out``.

    ``merge_cfg`` is the merge config group or the ``MergeParams`` resolved from it. Writes sharded
    safetensors in ``merge.out_dtype`` (default: ``merge.dtype``, else the base's; the merge itself is
    computed in ``merge.dtype``, float32 when null), the base's config and tokenizer, and
    ``merge_report.json``; returns the report. ``out`` is checked first (``output.check_output``:
    never an input, a file, or a non-empty folder no merge wrote unless ``overwrite``).
    """
    t0 = time.perf_counter()
    models = [Path(m) for m in models]
    params = resolve_params(merge_cfg, len(models))
    if params.output_format == "adapter":  # LoRA adapters merged on ΔW into an adapter (merge/lora_engine.py)
        from mixmerge.merge.lora_engine import merge_adapters

        return merge_adapters(params, base, models, Path(out), overwrite=overwrite)
    method = params.method
    if base is None and (method.needs_base or any(is_adapter_folder(m) for m in models)):
        raise ValueError(f"merge.method={method.name} needs merge.base (the model the specialists share)")
    named = [*([("merge.base", base)] if base is not None else []),
             *((f"merge.models[{i}]", m) for i, m in enumerate(models))]
    fisher_paths = params.require_fisher_paths(len(models)) if method.kind == "fisher" else ()
    named_fishers = [(f"merge.fisher_paths[{i}]", Path(p)) for i, p in enumerate(fisher_paths)]
    gram_paths = params.require_gram_paths(len(models)) if method.kind == "regmean" else ()
    named_fishers += [(f"merge.gram_paths[{i}]", Path(p)) for i, p in enumerate(gram_paths)]
    check_output(Path(out), [*named, *named_fishers], overwrite=overwrite)
    for field_name, p in named:
        if not Path(p).is_dir():
            raise FileNotFoundError(f"{field_name}={str(p)!r} is not a folder; give an HF model folder or a peft "
                                    "adapter folder")
    remove_stale_temporaries(Path(out))
    full_models = [m for m in models if not is_adapter_folder(m)]
    ref_path = Path(base) if base is not None else full_models[0]
    V.check_architectures(ref_path, models, params.vocab_policy)
    V.check_tokenizers(ref_path, models, params.vocab_policy)

    base_src = SafetensorsFolder(ref_path)
    sources = [open_source(m, base_src) for m in models]
    labels = [f"model {i} ({m})" for i, m in enumerate(models)]
    fishers = _open_fishers(fisher_paths, base_src)
    grams = open_grams(gram_paths, base_src)
    shapes = V.check_tensors(base_src, sources, labels, params.vocab_policy)
    if base is not None and params.max_base_distance is not None:
        V.check_same_base(base_src, sources, labels, params.max_base_distance)

    ref_cfg = V.read_config(ref_path) or {}
    out_dtype = _output_dtype(params.out_dtype or params.dtype, ref_cfg)
    n_layers = int(ref_cfg.get("num_hidden_layers", 1) or 1)
    names = base_src.names()
    entries = []
    for name in names:
        is_float = base_src.dtype_str(name) in FLOAT_DTYPES
        entries.append((name, shapes[name], out_dtype if is_float else base_src.dtype_str(name)))
    out = Path(out)
    tmp = temp_folder_beside(out)
    per_tensor: dict[str, dict[str, float]] = {}
    check_finite = params.check_finite
    # Without sparsification a NaN/Inf in any input reaches the output (0 * NaN is NaN), so checking the
    # output is enough; a sparsifier could drop it silently, so there every input is checked.
    inputs_can_vanish = method.sparsify is not None
    inputs_can_vanish = inputs_can_vanish or method.svd_based  # an SVD of a NaN fails without naming the input
    compute = compute_dtype_name(params)
    fusable = compute == "float32" and (method.kind == "linear" or fast_gta.applies(params, "cpu"))
    fused = FusedBuffers(len(models), shapes, names, base_src) if fusable else None
    try:
        writer = StreamingShardWriter(tmp, entries, int(params.shard_size_mb * 1e6))
        for name, shape, dtype in entries:
            tensor_params = params.for_tensor(name, n_layers)  # layer gradients and filters evaluated here
            if fused is not None and base_src.dtype_str(name) in FLOAT_DTYPES:
                merged, stats = _merge_fused(name, shape, tensor_params, base_src, sources, labels, fused,
                                             check_finite)
                writer.write_array(name, _cast(merged, dtype, fused))
            else:
                merged, stats = _merge_reference(name, shape, dtype, tensor_params, base_src, sources, labels,
                                                 fishers, n_layers, check_finite, inputs_can_vanish, compute,
                                                 grams, has_base=base is not None)
                writer.write(name, merged)
            del merged
            if stats is not None:
                per_tensor[name] = {"kept_fraction": round(stats.kept_fraction, 6),
                                    "sign_conflict_rate": round(stats.sign_conflict_rate, 6)}
                per_tensor[name].update(stats.details())  # a method's own decisions (merge=correlation)
        writer.close()
        copy_side_files(ref_path, tmp)
        _fix_config(tmp, out_dtype, shapes, names)
        report = {
            "method": method.name,
            "reference_url": method.reference_url,
            "parameters": params.as_report(),
            "base": str(base) if base is not None else None,
            "models": [str(m) for m in models],
            "output": str(out),
            "output_files": writer.files,
            "n_tensors": len(names),
            "total_bytes": writer.total_bytes,
            "per_tensor": per_tensor,
            "kept_fraction": _mean(v["kept_fraction"] for v in per_tensor.values()),
            "sign_conflict_rate": _mean(v["sign_conflict_rate"] for v in per_tensor.values()),
            "time_s": round(time.perf_counter() - t0, 3),
            "peak_rss_bytes": peak_rss_bytes(),
        }
        write_json_atomic(tmp / REPORT, report)
        publish_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        for src in [base_src, *sources, *fishers, *grams]:
            src.close()
    log.info("merged %d tensors with %s into %s in %.1f s", len(names), method.name, out, report["time_s"])
    return report


def _merge_reference(name, shape, dtype, params, base_src, sources, labels, fishers, n_layers, check_finite,
                     inputs_can_vanish, compute: str = "float32", grams=(), *, has_base: bool = True):
    """One tensor through the torch reference (``combine.merge_tensor``): the methods the fused kernels do
    not cover, compute dtypes other than float32, LoRA adapters (on the fused path too, through
    ``read_f32_into``) and integer tensors (copied from the base). Returns the tensor to write, computed in
    ``compute`` and then cast to ``dtype`` (as mergekit casts to out_dtype), and its diagnostics. Without a
    ``merge.base`` (``has_base`` false; ``base_src`` is then the first model, for names and integer
    tensors) the method gets no base tensor."""
    from mixmerge.merge.combine import merge_tensor  # imports torch

    rows = shape[0] if shape else None
    try:
        base_t = _in_place(base_src, name)
        tensors = [_in_place(src, name) for src in sources]
        if check_finite and inputs_can_vanish:
            _check_inputs_finite(name, base_t, tensors, labels)
        if rows is not None and base_t.shape != shape:
            base_t = base_t[:rows]
        tensors = [t[:rows] if t.shape != shape else t for t in tensors]
        if not base_t.is_floating_point():
            return base_t, None  # released pages are read again from the file on use
        fisher_t = [f.get(name)[:rows] if f.shape(name) != shape else f.get(name) for f in fishers] \
            if fishers else None
        gram_t = [g.get(name) for g in grams] if grams and name in grams[0] else None  # RegMean's linear weights
        merged, stats = merge_tensor(name, base_t if has_base else None, tensors, params, fishers=fisher_t,
                                     n_layers=n_layers, compute_dtype=torch_dtype_of(SAFETENSORS_NAMES[compute]),
                                     grams=gram_t)
        if check_finite and not V.all_finite(merged):
            _check_inputs_finite(name, base_t, tensors, labels)  # names the culprit input, if any
            raise ValueError(f"the merge of tensor {name!r} produced NaN/Inf; check merge.weights and "
                             f"merge.lambda")
        return merged.to(torch_dtype_of(dtype)), stats
    finally:
        for src in [base_src, *sources]:
            _release(src, name)


def _in_place(src, name: str):
    """The tensor straight from the memory-mapped file when possible (no read, no copy)."""
    return src.view(name) if isinstance(src, SafetensorsFolder) else src.get(name)


def _release(src, name: str) -> None:
    if isinstance(src, SafetensorsFolder):
        src.release(name)


def _check_inputs_finite(name, base_t, tensors, labels) -> None:
    V.check_finite(name, base_t, "merge.base")
    for t, label in zip(tensors, labels, strict=True):
        V.check_finite(name, t, label)


class FusedBuffers:
    """Float32 buffers for the fused path, sized for the largest tensor and reused for every tensor:
    the inputs are read straight into them and the result computed into them (no allocation per
    tensor). Peak memory: at most (2 n_models + 2) x the largest tensor (float32 inputs are read in place,
    and only DELLA uses the survivors buffer), plus the output cast for bfloat16/float16 outputs."""

    def __init__(self, n_models: int, shapes, names, base_src):
        largest = max((math.prod(shapes[n]) for n in names if base_src.dtype_str(n) in FLOAT_DTYPES), default=0)
        self.n_models = n_models
        # np.empty touches no page: with float32 inputs (the usual case) only ``out`` ever enters RSS.
        self.base = np.empty(largest, np.float32)
        self.models = np.empty(n_models * largest, np.float32)
        self.out = np.empty(largest, np.float32)
        self.survivors = np.empty(n_models * largest, np.float32)  # DELLA's
        self.cast = np.empty(largest, np.uint16)  # the result as bfloat16 or float16 bits

    def views(self, shape):
        n = math.prod(shape)
        models = self.models[: self.n_models * n].reshape(self.n_models, n)
        return self.base[:n], [models[i] for i in range(self.n_models)], self.out[:n]


def _cast(merged: np.ndarray, dtype: str, buffers: FusedBuffers) -> np.ndarray:
    """The float32 result in the output dtype (as torch's ``.to(dtype)`` rounds: to nearest, ties to even)."""
    if dtype == "F32":
        return merged
    out = buffers.cast[: merged.size].reshape(merged.shape)
    if dtype == "BF16":
        F.to_bfloat16_bits(merged.reshape(-1), out.reshape(-1))
        return out
    np.copyto(out.view(np.float16), merged, casting="same_kind")
    return out.view(np.float16)


def _merge_fused(name, shape, params, base_src, sources, labels, buffers: FusedBuffers, check_finite: bool):
    """One tensor of a task-vector method or of linear through the fused CPU kernels (numpy arrays, no
    torch). Float32 inputs of the right shape are used in place (memory-mapped, released after the
    tensor); others are read into reused buffers. Linear reads no base."""
    if params.method.kind == "linear":
        return _merge_linear(name, shape, params, sources, labels, buffers, check_finite)
    base_buf, model_bufs, out = buffers.views(shape)
    srcs = [base_src, *sources]
    base, *xs = [_read_flat(src, name, shape, buf) for src, buf in zip(srcs, [base_buf, *model_bufs], strict=True)]
    try:
        plan = fast_gta.plan_sparsity(name, base, xs, params, is_delta=False, shape=tuple(shape),
                                      scratch=buffers.survivors)
        merged, stats, bad_in, bad_out = fast_gta.merge_planned(base, xs, plan, params, is_delta=False, out=out)
        if check_finite and bad_in:
            _check_inputs_finite(name, base.reshape(shape), [x.reshape(shape) for x in xs], labels)
        if check_finite and bad_out:
            raise ValueError(f"the merge of tensor {name!r} produced NaN/Inf; check merge.weights and "
                             f"merge.lambda")
    finally:
        del base, xs
        for src in srcs:
            _release(src, name)
    return merged.reshape(shape), stats


def _merge_linear(name, shape, params, sources, labels, buffers: FusedBuffers, check_finite: bool):
    """sum_i w_i theta_i (/ sum_i w_i): ``kernels.linear_average``'s roundings (``fused.weighted_sum``)."""
    _, model_bufs, out = buffers.views(shape)
    xs = [_read_flat(src, name, shape, buf) for src, buf in zip(sources, model_bufs, strict=True)]
    try:
        divisor = weight_divisor(params.weights, params.normalize)
        merged = F.weighted_sum(xs, [float(w) / divisor for w in params.weights], out)
        if check_finite and not V.all_finite(merged):
            for x, label in zip(xs, labels, strict=True):
                V.check_finite(name, x.reshape(shape), label)
            raise ValueError(f"the merge of tensor {name!r} produced NaN/Inf; check merge.weights")
    finally:
        del xs
        for src in sources:
            _release(src, name)
    return merged.reshape(shape), None


def _read_flat(src, name: str, shape, buf: np.ndarray) -> np.ndarray:
    """The tensor as flat float32: in place when the file holds it so, else read into ``buf``."""
    if isinstance(src, SafetensorsFolder) and src.dtype_str(name) == "F32" and src.shape(name) == tuple(shape):
        return src.array(name).reshape(-1)
    src.read_f32_into(name, buf.reshape(shape))
    return buf


def _mean(values) -> float | None:
    vals = list(values)
    return round(sum(vals) / len(vals), 6) if vals else None


def _open_fishers(paths: Sequence[str], base_src) -> list[SafetensorsFolder]:
    folders = [SafetensorsFolder(p) for p in paths]
    for p, f in zip(paths, folders, strict=True):
        missing = [n for n in base_src.names() if n not in f and base_src.dtype_str(n) in FLOAT_DTYPES]
        if missing:
            raise ValueError(f"missing tensor: Fisher folder {p} has no {missing[0]!r}")
    return folders


def open_grams(paths: Sequence[str], base_src) -> list[SafetensorsFolder]:
    """RegMean's Gram folders (``merge/gram.py``), checked against the models: the same weights in every
    folder, each a 2-D float tensor of the models whose Gram is (in, in)."""
    folders = [SafetensorsFolder(p) for p in paths]
    if not folders:
        return folders
    names = sorted(folders[0].names())
    for p, f in zip(paths, folders, strict=True):
        if sorted(f.names()) != names:
            raise ValueError(f"merge.gram_paths: {p} has Grams of other layers than {paths[0]}; compute every "
                             f"model's Grams for the same architecture")
        for n in names:
            shape = base_src.shape(n) if n in base_src else None
            if shape is None or len(shape) != 2 or f.shape(n) != (shape[1], shape[1]):
                raise ValueError(f"merge.gram_paths: {p} holds a Gram {n!r} of shape {f.shape(n)}, which fits no "
                                 f"linear weight of the models (expected (in, in) of a 2-D weight); are the Grams "
                                 f"of another model?")
    if not names:
        raise ValueError(f"merge.gram_paths: {paths[0]} holds no Gram matrices")
    return folders


def _fix_config(out_dir: Path, dtype: str, shapes: Mapping[str, tuple[int, ...]], names) -> None:
    cfg_path = out_dir / "config.json"
    if not cfg_path.is_file():
        return
    cfg = json.loads(cfg_path.read_text())
    dtype_name = torch_name(dtype)
    keys = [k for k in ("dtype", "torch_dtype") if k in cfg] or ["dtype"]
    for k in keys:
        cfg[k] = dtype_name
    embed = next((n for n in names if "embed_tokens" in n), None)
    if embed is not None and "vocab_size" in cfg:
        cfg["vocab_size"] = shapes[embed][0]
    write_json_atomic(cfg_path, cfg)
