"""``strategy=merge``: merge arbitrary HF folders with no training or evaluation.

    python run.py strategy=merge merge=ties merge.base=PATH 'merge.models=[A,B]' \
        'merge.weights=[0.5,0.5]' merge.density=0.5 merge.output=OUT eval=none
    python run.py strategy=merge merge.from_mergekit=config.yml merge.output=OUT eval=none
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mixmerge.merge.config_group import resolve_standalone_cfg, standalone_request
from mixmerge.merge.engine import merge_folders

__all__ = ["resolve_standalone_cfg", "run"]


def run(merge_cfg: Mapping[str, Any]) -> dict:
    """Merge ``merge.models`` of ``merge.base`` into ``merge.output``; return the merge report."""
    request = standalone_request(merge_cfg)
    if request.layout is not None:  # a mergekit YAML with slices, tokenizer_source or chat_template
        from mixmerge.merge.slices import merge_layout

        return merge_layout(request.layout, request.output, overwrite=request.overwrite)
    return merge_folders(request.params, request.base, request.models, request.output, overwrite=request.overwrite)
