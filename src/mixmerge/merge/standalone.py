"""``strategy=merge``: merge arbitrary HF folders with no training or evaluation.

    python run.py strategy=merge merge=ties merge.base=PATH 'merge.models=[A,B]' \
        'merge.weights=[0.5,0.5]' merge.density=0.5 merge.output=OUT eval=none
    python run.py strategy=merge merge.from_mergekit=config.yml merge.output=OUT eval=none
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mixmerge.merge.engine import merge_folders
from mixmerge.merge.mergekit_yaml import load_mergekit_yaml

_IO_KEYS = ("base", "models", "output", "from_mergekit")


def resolve_standalone_cfg(merge_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The effective merge config: the mergekit file's settings (when given) under the explicit ones.

    Keys the mergekit file sets win over the method YAML's defaults; ``merge.output`` always comes from
    the command line.
    """
    cfg = dict(merge_cfg)
    src = cfg.get("from_mergekit")
    if src:
        imported = load_mergekit_yaml(src)
        for key in ("weight", "weights", "density", "epsilon", "gamma", "lambda", "normalize", "rescale", "t"):
            cfg.pop(key, None)  # the group YAML's defaults must not override the imported config
        cfg.update(imported)
    return cfg


def run(merge_cfg: Mapping[str, Any]) -> dict:
    """Merge ``merge.models`` of ``merge.base`` into ``merge.output``; return the merge report."""
    cfg = resolve_standalone_cfg(merge_cfg)
    models = cfg.get("models")
    if not models:
        raise ValueError("strategy=merge needs merge.models='[PATH_A,PATH_B]' (or merge.from_mergekit=FILE)")
    if not cfg.get("output"):
        raise ValueError("strategy=merge needs merge.output=OUT_FOLDER")
    base = Path(cfg["base"]) if cfg.get("base") else None
    merge_cfg_only = {k: v for k, v in cfg.items() if k not in _IO_KEYS}
    return merge_folders(merge_cfg_only, base, [Path(m) for m in models], Path(cfg["output"]))
