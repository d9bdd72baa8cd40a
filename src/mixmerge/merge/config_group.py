"""The merge config group as the user writes it, checked at the edge before any work.

``validate_merge_config`` is what the run's config check calls (it may read a ``merge.from_mergekit``
file, so it is not in the pure ``params.py``); ``standalone_request`` turns the group of a
``strategy=merge`` run into typed parameters plus where to read and write.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixmerge.merge.mergekit_yaml import IMPORTED_KEYS, load_mergekit_yaml
from mixmerge.merge.params import MergeParams, resolve_params
from mixmerge.merge.registry import get_method


def resolve_standalone_cfg(merge_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The effective merge config: the mergekit file's settings (when given) under the explicit ones.

    Keys the mergekit file sets win over the method YAML's defaults; ``merge.output`` always comes from
    the command line.
    """
    cfg = dict(merge_cfg)
    src = cfg.get("from_mergekit")
    if src:
        imported = load_mergekit_yaml(src)
        for key in IMPORTED_KEYS:
            cfg.pop(key, None)  # the group YAML's defaults must not override the imported config
        cfg.update(imported)
    return cfg


@dataclass(frozen=True)
class StandaloneRequest:
    """A ``strategy=merge`` run: what to merge, how, and where to."""

    params: MergeParams | None  # None for a layout
    base: Path | None
    models: list[Path]
    output: Path
    overwrite: bool
    layout: dict[str, Any] | None = None  # slices / tokenizer_source / chat_template (merge/slices.py)


def standalone_request(merge_cfg: Mapping[str, Any]) -> StandaloneRequest:
    """Resolve the merge group of a standalone merge once (a mergekit file folded in); raise a ValueError
    naming the field and the fix."""
    cfg = resolve_standalone_cfg(merge_cfg)
    models = cfg.get("models")
    if not models:
        raise ValueError("strategy=merge needs merge.models='[PATH_A,PATH_B]' (or merge.from_mergekit=FILE)")
    if not cfg.get("output"):
        raise ValueError("strategy=merge needs merge.output=OUT_FOLDER")
    overwrite = cfg.get("overwrite", False)
    overwrite = False if overwrite is None else overwrite
    if not isinstance(overwrite, bool):
        raise ValueError(f"merge.overwrite={overwrite!r} must be true or false")
    if cfg.get("layout") is not None:
        from mixmerge.merge.mergekit_layout import resolve_layout

        resolve_layout(cfg["layout"])  # every value checked before any work
        return StandaloneRequest(None, None, [], Path(cfg["output"]), overwrite, cfg["layout"])
    params = resolve_params(cfg, len(models))
    return StandaloneRequest(params, Path(cfg["base"]) if cfg.get("base") else None, [Path(m) for m in models],
                             Path(cfg["output"]), overwrite)


def validate_merge_config(merge_cfg: Mapping[str, Any], n_models: int | None = None) -> None:
    """Check a merge config before any work (method known, ranges, weights count); raise ValueError.

    ``n_models=None`` (a standalone merge whose models are not known yet): a ``merge.from_mergekit``
    file is read and checked with its own models; otherwise the count comes from ``merge.models`` or
    ``merge.weights``, else the method's minimum (so ranges are still checked).
    """
    if n_models is None:
        if merge_cfg.get("from_mergekit"):
            merge_cfg = resolve_standalone_cfg(merge_cfg)
            if merge_cfg.get("layout") is not None:
                from mixmerge.merge.mergekit_layout import resolve_layout

                resolve_layout(merge_cfg["layout"])
                return
        if merge_cfg.get("models"):
            n_models = len(merge_cfg["models"])
        elif merge_cfg.get("weights") is not None:
            n_models = len(merge_cfg["weights"])
        else:
            method = get_method(str(merge_cfg.get("method")))
            n_models = max(method.min_models, 2 if method.max_models is None or method.max_models >= 2 else 1)
    resolve_params(merge_cfg, n_models)
