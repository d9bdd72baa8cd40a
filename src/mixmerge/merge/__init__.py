"""merge stage: pure kernels, a method table, streaming and in-memory engines.

``kernels.py`` is the math as readable torch (the reference, and the GPU path); on a CPU the
task-vector methods run through ``fused/``/``fast_gta.py``, numba kernels that give the same numbers
in a few passes; the streamed merge of those methods and of linear never imports torch (``common.py``
holds what the two sides share).

The lead calls ``validate_merge_config`` before any training, ``resolve_params`` once to get the typed
``MergeParams`` that ``merge_folders`` (writes a merged HF folder) and ``InMemoryMerger`` (sweeps) take,
and ``standalone.run`` for ``strategy=merge``. ``IO_KEYS`` are the group's keys that say where to read
and write (never part of a merge's cache key). The engines are imported on first use: validating a
config must not pay for torch.
"""

from __future__ import annotations

import importlib

from mixmerge.merge.config_group import validate_merge_config
from mixmerge.merge.params import IO_KEYS, MergeParams, resolve_params, resolve_weights
from mixmerge.merge.registry import ALIASES, METHODS, get_method

_LAZY = {"merge_folders": "mixmerge.merge.engine", "InMemoryMerger": "mixmerge.merge.in_memory"}

__all__ = [
    "ALIASES",
    "IO_KEYS",
    "METHODS",
    "InMemoryMerger",
    "MergeParams",
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
