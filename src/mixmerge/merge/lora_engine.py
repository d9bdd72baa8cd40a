"""``merge.output_format=adapter``: LoRA adapters merged exactly on ΔW, written back as a peft adapter.

Per module of the union of the adapters' targets: each adapter's ΔW_i = s_i B_i A_i (zeros where it does not
touch the module), the method's merge of the ΔW_i (``lora_merge.merge_deltas``, the kernels of the
full-weight merge), then the truncated SVD at ``merge.adapter_rank`` (``lora_merge.truncated_factors``).
``merge_report.json`` holds each module's rank and relative truncation error ‖ΔW − B'A'‖_F / ‖ΔW‖_F and the
total over all modules; the log prints the total and the worst modules. The folder appears at ``out`` only
when complete (temp folder + rename).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from mixmerge.files import publish_folder, temp_folder_beside, write_json_atomic
from mixmerge.merge import lora_io
from mixmerge.merge import lora_merge as L
from mixmerge.merge.io import REPORT, SafetensorsFolder
from mixmerge.merge.output import check_output, remove_stale_temporaries
from mixmerge.merge.params import MergeParams
from mixmerge.merge.validate import read_config

log = logging.getLogger(__name__)


def merge_adapters(params: MergeParams, base: Path | None, models: Sequence[Path], out: Path, *,
                   overwrite: bool = False) -> dict:
    """Merge the LoRA adapters ``models`` of ``base`` into the peft adapter folder ``out``; return the report.

    Everything is checked before any work (inputs, output folder, the adapters' fit to each other and the
    base); the factors are written in ``merge.out_dtype`` (else ``merge.dtype``, else the first adapter's).
    """
    t0 = time.perf_counter()
    models = [Path(m) for m in models]
    if base is None:
        raise ValueError("merge.output_format=adapter needs merge.base (the model the adapters were trained on)")
    named = [("merge.base", Path(base)), *((f"merge.models[{i}]", m) for i, m in enumerate(models))]
    check_output(Path(out), named, overwrite=overwrite)
    for field_name, p in named:
        if not p.is_dir():
            raise FileNotFoundError(f"{field_name}={str(p)!r} is not a folder")
    lora_io.check_adapter_inputs(models)
    remove_stale_temporaries(Path(out))
    n_layers = int((read_config(Path(base)) or {}).get("num_hidden_layers", 1) or 1)
    base_src = SafetensorsFolder(base)
    sources = []
    try:
        sources = lora_io.open_adapters(models, base_src)
        report = _merge_and_write(params, base, models, Path(out), base_src, sources, n_layers, t0)
    finally:
        for src in [*sources, base_src]:
            src.close()
    log.info("merged %d LoRA adapters with %s into the rank-%s adapter %s in %.1f s: relative truncation "
             "error %.3g in total", len(models), params.method.name, params.adapter_rank or "exact", out,
             report["time_s"], report["relative_error"])
    worst = sorted(report["per_module"].items(), key=lambda kv: -kv[1]["relative_error"])[:5]
    for module, row in worst:
        log.info("  %s: rank %d, relative error %.3g", module, row["rank"], row["relative_error"])
    return report


def _merge_and_write(params, base, models, out, base_src, sources, n_layers, t0) -> dict:
    import torch

    order = {name: k for k, name in enumerate(base_src.names())}
    targets = sorted({t for src in sources for t in src.lora_targets()}, key=order.__getitem__)
    first_a = sources[0].factors(sources[0].lora_targets()[0])[0]
    requested = params.out_dtype or params.dtype
    dtype = getattr(torch, requested) if requested else first_a.dtype
    if not dtype.is_floating_point:
        raise ValueError(f"{models[0]}: LoRA factors of dtype {dtype} cannot hold a merge; set merge.out_dtype")
    factors, per_module = {}, {}
    for target in targets:
        shape = base_src.shape(target)
        deltas, ranks, lefts, rights = [], [], [], []
        tensor_params = params.for_tensor(target, n_layers)
        coefficients = None if L.is_elementwise(tensor_params) else L.linear_coefficients(tensor_params)
        for i, src in enumerate(sources):
            if target in src.lora_targets():
                a, b, scale = src.factors(target)
                deltas.append(L.lora_delta(a, b, scale))
                ranks.append(a.shape[0])
                if coefficients is not None:  # merged ΔW = Σ (c_i s_i B_i) A_i: its SVD from the factors
                    lefts.append(b.double() * (coefficients[i] * scale))
                    rights.append(a.double())
            else:
                deltas.append(torch.zeros(shape))
        merged = L.merge_deltas(target, deltas, tensor_params)
        bound = L.rank_bound(tensor_params, shape, ranks)
        rank = bound if params.adapter_rank is None else min(params.adapter_rank, bound)
        low_rank = (torch.cat(lefts, dim=1), torch.cat(rights, dim=0)) if coefficients is not None else None
        f = L.truncated_factors(merged, rank, dtype, low_rank=low_rank)
        factors[target] = (f.b, f.a)
        per_module[lora_io.module_of(target)] = {
            "rank": f.rank, "input_ranks": ranks, "delta_norm": f.delta_norm, "error_norm": f.error_norm,
            "relative_error": f.relative_error}
    ranks_by_target = {t: factors[t][1].shape[0] for t in targets}
    config = lora_io.adapter_config(ranks=ranks_by_target, task_type=sources[0].config.get("task_type"),
                                    base_model_name_or_path=sources[0].config.get("base_model_name_or_path"))
    all_f = [L.Factors(b, a, row["delta_norm"], row["error_norm"])
             for (b, a), row in zip(factors.values(), per_module.values(), strict=True)]
    tmp = temp_folder_beside(out)
    try:
        files = lora_io.write_adapter(tmp, factors, config)
        report = {
            "method": params.method.name,
            "reference_url": params.method.reference_url,
            "parameters": {**params.as_report(), "output_format": "adapter", "adapter_rank": params.adapter_rank},
            "base": str(base),
            "models": [str(m) for m in models],
            "output": str(out),
            "output_files": files,
            "output_format": "adapter",
            "adapter_dtype": str(dtype).removeprefix("torch."),
            "n_modules": len(targets),
            "relative_error": L.total_relative_error(all_f),
            "per_module": per_module,
            "time_s": round(time.perf_counter() - t0, 3),
        }
        write_json_atomic(tmp / REPORT, report)
        publish_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report

