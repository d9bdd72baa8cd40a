"""Where a tensor sits in a decoder: its layer (or embed/head/norm) and its module type.

Works for Llama, Qwen2, Mistral and other HF decoders that name blocks ``...layers.<i>.<module>...``
(GPT-2-style ``h.<i>`` and ``blocks.<i>`` too). Analysis groups tensors by these two keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mixmerge.merge.tensor_names import split_layer

__all__ = ["MODULE_TYPES", "TensorLocation", "layer_sort_key", "locate"]

# Module types in display order; "other" catches anything unrecognised (e.g. rotary buffers).
MODULE_TYPES = (
    "embed", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "norm", "head", "other",
)

_PROJ = re.compile(r"(?:^|\.)(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)(?:\.|$)")
# Fused or differently named projections in other families, mapped onto the Llama names.
_ALIASES = {"c_attn": "q_proj", "query": "q_proj", "key": "k_proj", "value": "v_proj", "dense": "o_proj"}


@dataclass(frozen=True)
class TensorLocation:
    """``layer`` is the block index, or "embed" / "head" / "norm" for tensors outside the blocks."""

    layer: int | str
    module: str
    param: str  # "weight", "bias", ...


def locate(name: str) -> TensorLocation:
    """Map an HF tensor name to its layer and module type.

    >>> locate("model.layers.3.self_attn.q_proj.weight")
    TensorLocation(layer=3, module='q_proj', param='weight')
    >>> locate("lm_head.weight")
    TensorLocation(layer='head', module='head', param='weight')
    """
    param = name.rsplit(".", 1)[-1] if "." in name else name
    found = split_layer(name)
    if found is None:
        if "embed_tokens" in name or name.endswith(("wte.weight", "word_embeddings.weight")):
            return TensorLocation("embed", "embed", param)
        if name.startswith("lm_head") or ".lm_head." in name or name.endswith("output.weight"):
            return TensorLocation("head", "head", param)
        if "norm" in name or name.endswith(("ln_f.weight", "ln_f.bias")):
            return TensorLocation("norm", "norm", param)
        return TensorLocation("other", "other", param)
    layer, rest = found
    proj = _PROJ.search("." + rest)
    if proj is not None:
        return TensorLocation(layer, proj.group(1), param)
    if "norm" in rest or rest.startswith(("ln_", "ln1", "ln2")):
        return TensorLocation(layer, "norm", param)
    for alias, module in _ALIASES.items():
        if f"{alias}." in rest:
            return TensorLocation(layer, module, param)
    return TensorLocation(layer, "other", param)


def layer_sort_key(layer: int | str) -> tuple[int, int | str]:
    """Order: embed, blocks 0..N-1, final norm, head, anything else."""
    if isinstance(layer, int):
        return (1, layer)
    return {"embed": (0, 0), "norm": (2, 0), "head": (3, 0)}.get(layer, (4, str(layer)))
