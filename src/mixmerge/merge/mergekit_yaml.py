"""Read a mergekit YAML (the common subset) into a mixmerge merge config, so users carry configs over.

Supported: ``merge_method``, ``base_model``, ``models: [{model, parameters}]`` with scalar per-model
``weight``/``density``/``epsilon``/``gamma``, global ``parameters`` (``lambda``, ``normalize``,
``rescale``, ``t`` incl. gradients and filters, ``filter_wise``), ``dtype``. Not supported (refused
with a clear error): ``slices``, per-tensor filtered per-model parameters, ``tokenizer_source``. Any
other key is refused too, with the closest known one (a typo such as ``densty`` must not merge untrimmed).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from mixmerge.merge.params import check_known_keys
from mixmerge.merge.registry import METHODS

PER_MODEL = ("weight", "density", "epsilon", "gamma")
GLOBAL = ("lambda", "normalize", "rescale", "t", "filter_wise", "int8_mask")
UNSUPPORTED = ("slices", "tokenizer_source", "tokenizer", "chat_template")
TOP_LEVEL = ("merge_method", "base_model", "models", "parameters", "dtype", *UNSUPPORTED)
MODEL_ENTRY = ("model", "parameters")
# The merge keys an imported file decides: the method YAML's defaults for them are dropped.
IMPORTED_KEYS = ("weight", "weights", "density", "epsilon", "gamma", "lambda", "normalize", "rescale", "t")


def mergekit_to_merge_cfg(doc: Mapping[str, Any], source: str = "mergekit YAML") -> dict[str, Any]:
    """Translate a parsed mergekit config into ``merge.*`` keys (method, base, models, weights, ...)."""
    check_known_keys(doc, TOP_LEVEL, f"{source}: ")
    for key in UNSUPPORTED:
        if doc.get(key) is not None:
            raise ValueError(f"{source}: mergekit key {key!r} is not supported by merge.from_mergekit; "
                             f"use mergekit itself for that config")
    check_known_keys(doc.get("parameters") or {}, (*PER_MODEL, *GLOBAL), f"{source}: parameters.")
    for i, entry in enumerate(doc.get("models") or []):
        check_known_keys(entry, MODEL_ENTRY, f"{source}: models[{i}].")
        check_known_keys(entry.get("parameters") or {}, PER_MODEL, f"{source}: models[{i}].parameters.")
    method = doc.get("merge_method")
    if not method:
        raise ValueError(f"{source}: no merge_method")
    base = doc.get("base_model")
    entries = [e for e in (doc.get("models") or []) if e.get("model") != base or e.get("parameters")]
    if method == "slerp":
        others = [e for e in entries if e.get("model") != base]
        if base is None or len(others) != 1:
            raise ValueError(f"{source}: slerp needs base_model and exactly one other model")
        entries = [{"model": base}, others[0]]
    if not entries:
        raise ValueError(f"{source}: no models to merge")
    cfg: dict[str, Any] = {"method": method, "base": base, "models": [str(e["model"]) for e in entries]}
    for key in PER_MODEL:
        values = [(e.get("parameters") or {}).get(key) for e in entries]
        if all(v is None for v in values):
            continue
        glob = (doc.get("parameters") or {}).get(key)
        values = [glob if v is None else v for v in values]
        for v in values:
            if isinstance(v, list | dict):
                raise ValueError(f"{source}: per-model {key}={v!r} (gradient/filter) is not supported; use a number")
        if key == "weight":
            if any(v is None for v in values):
                raise ValueError(f"{source}: every model needs a weight when one has one")
            cfg["weights"] = [float(v) for v in values]
        else:
            cfg[key] = values if any(v is not None for v in values) else None
    for key, value in (doc.get("parameters") or {}).items():
        if key in GLOBAL and key != "int8_mask":
            cfg[key] = value
        elif key == "weight" and "weights" not in cfg:
            cfg["weights"] = [float(value)] * len(entries)
        elif key in PER_MODEL and key not in cfg:
            cfg[key] = value
    if doc.get("dtype") is not None:
        cfg["dtype"] = doc["dtype"]
    row = METHODS.get(method)  # mergekit names only (not our aliases); an unknown method is refused later
    if row is not None and row.task_vector_family and "weights" not in cfg:
        cfg["weights"] = [1.0] * len(entries)  # mergekit's default when no weight is given
    return cfg


def load_mergekit_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"merge.from_mergekit={str(path)!r} does not exist")
    return mergekit_to_merge_cfg(yaml.safe_load(path.read_text()) or {}, str(path))
