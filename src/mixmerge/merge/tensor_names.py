"""Where a tensor sits in a decoder's block stack, from its HF name (pure): the one layer-name parser
that the merge (SLERP's gradients over layers) and the analysis (rows per layer) share."""

from __future__ import annotations

import re

# Llama, Qwen2, Mistral, ... name blocks ``...layers.<i>.``; GPT-2 ``h.<i>.``; others ``blocks.<i>.``.
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")


def split_layer(name: str) -> tuple[int, str] | None:
    """``(block index, the name after the block prefix)``, or None for a tensor outside the blocks.

    >>> split_layer("model.layers.3.self_attn.q_proj.weight")
    (3, 'self_attn.q_proj.weight')
    >>> split_layer("lm_head.weight") is None
    True
    """
    m = _LAYER.search(name)
    return None if m is None else (int(m.group(1)), name[m.end():])


def layer_index(name: str) -> int | None:
    """The block index of ``name``, or None outside the blocks (embeddings, final norm, head)."""
    found = split_layer(name)
    return None if found is None else found[0]
