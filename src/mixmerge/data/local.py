"""The local-file task source: any JSONL/JSON/Parquet table with a field mapping.

Config (``task.tasks.<name>`` with ``source: local``):
  path: one file, carved into splits by a hash of each id (valid_fraction, test_fraction), or
  paths: {train, valid, test}
  format: fields (default; then fields: {prompt: <col>, target: <col>, id: <col, optional>}) | kodcode | codexglue
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mixmerge.data.example import Example
from mixmerge.data.hub import SPLITS, load_table_task
from mixmerge.data.rows import read_table

LOCAL_KEYS = frozenset({"source", "path", "paths", "format", "fields", "valid_fraction", "test_fraction"})


def load_local_task(task: str, cfg: Mapping[str, Any]) -> tuple[dict[str, list[Example]], dict]:
    where = f"task.tasks.{task}"
    unknown = set(cfg) - LOCAL_KEYS
    if unknown:
        raise ValueError(f"{where} (source=local) has unknown keys {sorted(unknown)}; allowed: {sorted(LOCAL_KEYS)}")
    paths, path = cfg.get("paths"), cfg.get("path")
    if bool(paths) == bool(path):
        raise ValueError(f"{where}: give exactly one of path (one file, carved into splits) or paths (train/valid/test)")
    if paths:
        missing = set(SPLITS) - set(paths)
        if missing:
            raise ValueError(f"{where}.paths is missing {sorted(missing)}")
        splits, info = load_table_task(task, cfg, where, lambda s: read_table(paths[s]), {s: s for s in SPLITS})
    else:
        splits, info = load_table_task(task, cfg, where, lambda s: read_table(path), None)
    return splits, {"source": "local", "path": str(path or dict(paths)), **info}
