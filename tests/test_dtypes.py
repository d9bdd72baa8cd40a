"""Dtype names (mixmerge.dtypes): one table for configs, torch and safetensors."""

from __future__ import annotations

import pytest
import torch

from mixmerge.dtypes import DTYPE_NAMES, SAFETENSORS_NAMES, torch_dtype


def test_every_name_maps_to_torch_and_safetensors():
    assert DTYPE_NAMES == ("float32", "bfloat16", "float16")
    assert [torch_dtype(n) for n in DTYPE_NAMES] == [torch.float32, torch.bfloat16, torch.float16]
    assert [SAFETENSORS_NAMES[n] for n in DTYPE_NAMES] == ["F32", "BF16", "F16"]


def test_an_unknown_name_fails_naming_the_field():
    with pytest.raises(ValueError, match=r"finetune\.quantization\.compute_dtype='float8' is not one of float32"):
        torch_dtype("float8", "finetune.quantization.compute_dtype")
    with pytest.raises(ValueError, match=r"model\.dtype='int8'"):
        torch_dtype("int8")
