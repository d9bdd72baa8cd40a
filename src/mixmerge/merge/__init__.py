"""merge stage: pure kernels, a method table, streaming and in-memory engines.

``kernels.py`` is the math as readable torch (the reference, and the GPU path); on a CPU the
task-vector methods run through ``fused.py``/``fast_gta.py``, numba kernels that give the same numbers
in a few passes; the streamed merge of those methods and of linear never imports torch (``common.py``
holds what the two sides share).

The lead calls ``validate_merge_config`` before any training, ``merge_folders`` to write a merged HF
folder, ``InMemoryMerger`` for sweeps, ``standalone.run`` for ``strategy=merge``. The engines are
imported on first use: validating a config must not pay for torch.
"""

from __future__ import annotations

import importlib

from mixmerge.merge.params import resolve_params, resolve_weights, validate_merge_config
from mixmerge.merge.registry import ALIASES, METHODS, get_method

_LAZY = {"merge_folders": "mixmerge.merge.engine", "InMemoryMerger": "mixmerge.merge.in_memory"}

__all__ = [
    "ALIASES",
    "METHODS",
    "InMemoryMerger",
    "get_method",
    "merge_folders",
    "resolve_params",
    "resolve_weights",
    "validate_merge_config",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
