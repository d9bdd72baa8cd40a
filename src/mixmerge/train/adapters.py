"""Model preparation per fine-tuning method: full weights, LoRA (peft) or QLoRA (bitsandbytes NF4 + LoRA).

The export always yields full float weights (merging needs them) plus, for adapters, the adapter itself
and the names of the base tensors it changes. We never merge into a 4-bit base: the adapter is folded
into a float copy of the base loaded afresh.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mixmerge.dtypes import torch_dtype
from mixmerge.models import load_model

log = logging.getLogger(__name__)

METHODS = ("full", "lora", "qlora")


def lora_config(lora: Mapping[str, Any]):
    from peft import LoraConfig

    return LoraConfig(r=int(lora["r"]), lora_alpha=int(lora["alpha"]), lora_dropout=float(lora["dropout"]),
                      target_modules=list(lora["target_modules"]), task_type="CAUSAL_LM")


def prepare_model(base_path: Path, finetune: Mapping[str, Any], *, dtype: str):
    """Load the base for training as ``finetune.method`` asks; returns the (possibly peft-wrapped) model."""
    method = finetune["method"]
    if method not in METHODS:
        raise ValueError(f"finetune.method={method!r} is not one of {METHODS}")
    if method == "full":
        return load_model(base_path, dtype=dtype)
    from peft import get_peft_model

    if method == "lora":
        model = load_model(base_path, dtype=dtype)
    else:
        from peft import prepare_model_for_kbit_training
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        q = finetune["quantization"]
        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=q["quant_type"],
                                 bnb_4bit_use_double_quant=bool(q["double_quant"]),
                                 bnb_4bit_compute_dtype=torch_dtype(q["compute_dtype"], "finetune.quantization.compute_dtype"))
        model = AutoModelForCausalLM.from_pretrained(str(base_path), quantization_config=bnb,
                                                     dtype=torch_dtype(q["compute_dtype"], "finetune.quantization.compute_dtype"))
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, lora_config(finetune["lora"]))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info("%s: %d trainable of %d parameters (%.2f%%)", method, trainable, total, 100 * trainable / total)
    return model


def changed_base_tensors(model, finetune: Mapping[str, Any]) -> list[str]:
    """Names (in the base's state dict) of the tensors this fine-tune changes."""
    if finetune["method"] == "full":
        return sorted(model.state_dict().keys())
    names = set()
    for name, _ in model.named_parameters():
        if ".lora_A." in name:
            module = name.split(".lora_A.")[0].removeprefix("base_model.model.")
            names.add(f"{module}.weight")
    return sorted(names)


def export_model(model, finetune: Mapping[str, Any], base_path: Path, out_dir: Path, tokenizer, *,
                 dtype: str) -> list[str]:
    """Write full float weights (and for adapters, ``adapter/``) into ``out_dir``; return changed tensors."""
    changed = changed_base_tensors(model, finetune)
    if finetune["method"] == "full":
        model.save_pretrained(out_dir, safe_serialization=True)
    else:
        from peft import PeftModel

        adapter_dir = out_dir / "adapter"
        model.save_pretrained(adapter_dir, safe_serialization=True)
        merged = PeftModel.from_pretrained(load_model(base_path, dtype=dtype), adapter_dir).merge_and_unload()
        merged.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return changed
