"""Reading LoRA adapters for an exact ΔW merge, and writing the merge back as a peft adapter folder.

Reading reuses ``io.LoraAdapterSource`` and adds the checks an adapter output needs, all before any work:
every model is a LoRA adapter, trained on the same base (``base_model_name_or_path`` agrees), whose
factors fit the base's shapes, with no whole tensors (``modules_to_save``: a full tensor is no low-rank
change) and no ``fan_in_fan_out`` (GPT-2's Conv1D layout). Adapters may differ in rank, alpha and target
modules: the merge covers the union of their modules, a module an adapter does not touch counting as
ΔW = 0 for it, which is exactly what the full-weight merge of the expanded models sees.

Writing produces ``adapter_config.json`` + ``adapter_model.safetensors`` that ``PeftModel.from_pretrained``
loads: the exact module names as ``target_modules``, ``lora_alpha = r`` (scale 1, so B A is ΔW itself), and
``rank_pattern``/``alpha_pattern`` for modules whose rank differs from ``r``. The caller writes into a
temporary folder and publishes it whole (atomic).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from mixmerge.merge.io import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    LoraAdapterSource,
    SafetensorsFolder,
    is_adapter_folder,
)

_PREFIX = "base_model.model."  # peft's prefix of a saved adapter's tensor names


def module_of(tensor_name: str) -> str:
    """``model.layers.0.self_attn.q_proj.weight`` -> ``model.layers.0.self_attn.q_proj``."""
    return tensor_name.removesuffix(".weight")


def check_adapter_inputs(models: Sequence[Path]) -> None:
    """Every ``merge.models`` entry is a peft adapter folder (an adapter output merges ΔW = B A only)."""
    for i, m in enumerate(models):
        if not is_adapter_folder(m):
            raise ValueError(f"merge.output_format=adapter needs every model to be a peft LoRA adapter folder "
                             f"(with {ADAPTER_CONFIG}); merge.models[{i}]={str(m)!r} is not. Use "
                             f"merge.output_format=model to merge full models")


def open_adapters(models: Sequence[Path], base: SafetensorsFolder) -> list[LoraAdapterSource]:
    """The adapters, checked against each other and the base (see the module's docstring); raises a
    ValueError naming the model and the fix. Closes what it opened when it refuses."""
    sources: list[LoraAdapterSource] = []
    try:
        for m in models:
            sources.append(LoraAdapterSource(m, base))
        _check_adapters(models, sources, base)
    except BaseException:
        for src in sources:
            src.close()
        raise
    return sources


def _check_adapters(models: Sequence[Path], sources: Sequence[LoraAdapterSource], base: SafetensorsFolder) -> None:
    named_bases = {}
    for i, (m, src) in enumerate(zip(models, sources, strict=True)):
        where = f"merge.models[{i}]={str(m)!r}"
        if src.whole_targets():
            raise ValueError(f"{where} saves whole tensors ({', '.join(src.whole_targets()[:3])}: modules_to_save), "
                             f"which a LoRA output cannot hold; use merge.output_format=model, or retrain without "
                             f"modules_to_save")
        if src.config.get("fan_in_fan_out"):
            raise ValueError(f"{where} has fan_in_fan_out=true (Conv1D weights), which merge.output_format=adapter "
                             f"does not write; use merge.output_format=model")
        if not src.lora_targets():
            raise ValueError(f"{where} has no lora_A/lora_B tensors; it changes nothing to merge")
        for target in src.lora_targets():
            a, b, _ = src.factors(target)
            out_in = base.shape(target)
            if len(out_in) != 2 or a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1] \
                    or (b.shape[0], a.shape[1]) != out_in:
                raise ValueError(f"{where}: the LoRA factors of {target} (B {tuple(b.shape)}, A {tuple(a.shape)}) do "
                                 f"not fit the base's {tuple(out_in)}; the adapter was trained on another base "
                                 f"than merge.base")
        name = src.config.get("base_model_name_or_path")
        if name:
            named_bases[i] = name
    if len(set(named_bases.values())) > 1:
        (i, x), (j, y) = next((p, q) for p in named_bases.items() for q in named_bases.items() if p[1] != q[1])
        raise ValueError(f"merge.models[{i}] was trained on {x!r} but merge.models[{j}] on {y!r} "
                         f"(base_model_name_or_path in {ADAPTER_CONFIG}); adapters of different bases have no "
                         f"common ΔW. If both name the same model, make the names agree")


def adapter_config(*, ranks: Mapping[str, int], base_model_name_or_path: str | None,
                   task_type: str | None) -> dict:
    """A peft LoRA config for modules (tensor name -> rank) with B A = ΔW (alpha = r everywhere)."""
    if not ranks:
        raise ValueError("an adapter needs at least one module")
    r = max(ranks.values())
    pattern = {module_of(t): k for t, k in ranks.items() if k != r}
    return {
        "peft_type": "LORA", "task_type": task_type, "base_model_name_or_path": base_model_name_or_path,
        "inference_mode": True, "r": r, "lora_alpha": r, "lora_dropout": 0.0, "use_rslora": False,
        "fan_in_fan_out": False, "bias": "none", "modules_to_save": None, "init_lora_weights": True,
        "target_modules": sorted(module_of(t) for t in ranks), "rank_pattern": pattern, "alpha_pattern": dict(pattern),
        "use_dora": False,
    }


def write_adapter(folder: Path, factors: Mapping[str, tuple], config: Mapping) -> list[str]:
    """Write ``factors`` (tensor name -> (B, A)) and ``config`` into ``folder`` as peft saves them; returns
    the file names."""
    from safetensors.torch import save_file

    state = {}
    for target, (b, a) in factors.items():
        module = _PREFIX + module_of(target)
        state[f"{module}.lora_A.weight"] = a.contiguous()
        state[f"{module}.lora_B.weight"] = b.contiguous()
    save_file(state, str(Path(folder) / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (Path(folder) / ADAPTER_CONFIG).write_text(json.dumps(dict(config), indent=2) + "\n")
    return [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
