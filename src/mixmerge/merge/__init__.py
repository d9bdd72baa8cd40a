"""merge stage: pure kernels, a method table, streaming and in-memory engines.

``kernels.py`` is the math as readable torch (the reference, and the GPU path); on a CPU the
task-vector methods run through ``fused.py``/``fast_gta.py``, numba kernels that give the same numbers
in a few passes.

The lead calls ``validate_merge_config`` before any training, ``merge_folders`` to write a merged HF
folder, ``InMemoryMerger`` for sweeps, ``standalone.run`` for ``strategy=merge``.
"""

from mixmerge.merge.engine import merge_folders
from mixmerge.merge.in_memory import InMemoryMerger
from mixmerge.merge.params import resolve_params, resolve_weights, validate_merge_config
from mixmerge.merge.registry import ALIASES, METHODS, get_method

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
