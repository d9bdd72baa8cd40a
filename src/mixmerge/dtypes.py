"""Floating-point dtype names: the ones a config may name, and how they map to torch and safetensors.

Configs name dtypes as strings (``model.dtype``, ``merge.dtype``, ``finetune.quantization.compute_dtype``);
this is the one table that says which strings are valid and what they mean. torch is imported only when a
name is converted, so validating a config stays fast.
"""

from __future__ import annotations

from typing import Any

# name (as torch and config.json spell it) -> safetensors header name
SAFETENSORS_NAMES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
DTYPE_NAMES = tuple(SAFETENSORS_NAMES)  # what model.dtype / merge.dtype may be


def check_dtype_name(name: Any, field: str = "model.dtype") -> str:
    """``name`` if it is one of ``DTYPE_NAMES``; otherwise a ValueError naming ``field`` and the choices."""
    if name not in SAFETENSORS_NAMES:
        raise ValueError(f"{field}={name!r} is not one of {', '.join(DTYPE_NAMES)}")
    return name


def torch_dtype(name: str, field: str = "model.dtype"):
    """The torch dtype called ``name`` ("bfloat16" -> torch.bfloat16)."""
    import torch

    return getattr(torch, check_dtype_name(name, field))
