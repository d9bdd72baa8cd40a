"""The hub task source: KodCode (codegen), CodeXGLUE code-to-text python (codesum), or any hub table.

Config (``task.tasks.<name>`` with ``source: hub``):
  dataset_id, config, revision  what ``datasets.load_dataset`` gets;
  format                        kodcode | codexglue | fields (see ``formats.py``), with ``fields`` for the last;
  splits: {train, valid, test}  the dataset's split names, or
  split + valid_fraction + test_fraction   one split carved into three by a hash of each example id;
  data_files                    optional local files in the same schema (one path, or {train, valid, test})
                                used instead of the hub: for tests, mirrors and air-gapped machines.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from mixmerge.data.example import Example
from mixmerge.data.formats import converter
from mixmerge.data.rows import read_hub_split, read_table
from mixmerge.data.text import unit_interval

SPLITS = ("train", "valid", "test")
HUB_KEYS = frozenset({"source", "dataset_id", "config", "revision", "format", "fields", "split", "splits",
                      "valid_fraction", "test_fraction", "data_files"})


def carve(examples: Iterable[Example], valid_fraction: float, test_fraction: float) -> dict[str, list[Example]]:
    """Split one list into train/valid/test by a seedless hash of each id (stable as the data grows)."""
    out: dict[str, list[Example]] = {s: [] for s in SPLITS}
    for ex in examples:
        u = unit_interval("split:" + ex.id)
        out["test" if u < test_fraction else "valid" if u < test_fraction + valid_fraction else "train"].append(ex)
    return out


def convert_rows(rows: Iterable[Mapping[str, Any]], convert: Callable, task: str) -> tuple[list[Example], int]:
    """Examples from rows, dropping rows the converter rejects and repeated ids; also the dropped count."""
    out, seen, dropped = [], set(), 0
    for row in rows:
        ex = convert(row, task)
        if ex is None or ex.id in seen:
            dropped += 1
            continue
        seen.add(ex.id)
        out.append(ex)
    return out, dropped


def load_table_task(task: str, cfg: Mapping[str, Any], where: str,
                    read: Callable[[str], Iterable[Mapping[str, Any]]], split_names: Mapping[str, str] | None
                    ) -> tuple[dict[str, list[Example]], dict]:
    """Shared by hub and local sources: read the split(s), convert, carve if there is only one."""
    fmt = cfg.get("format", "fields")
    convert = converter(fmt, cfg, where)
    dropped = 0
    if split_names:
        splits = {}
        for ours in SPLITS:
            if ours not in split_names:
                raise ValueError(f"{where}.splits needs train, valid and test; got {sorted(split_names)}")
            splits[ours], n = convert_rows(read(split_names[ours]), convert, task)
            dropped += n
    else:
        examples, dropped = convert_rows(read(None), convert, task)
        splits = carve(examples, float(cfg.get("valid_fraction", 0.05)), float(cfg.get("test_fraction", 0.05)))
    return splits, {"format": fmt, "dropped_rows": dropped}


def load_hub_task(task: str, cfg: Mapping[str, Any]) -> tuple[dict[str, list[Example]], dict]:
    where = f"task.tasks.{task}"
    unknown = set(cfg) - HUB_KEYS
    if unknown:
        raise ValueError(f"{where} (source=hub) has unknown keys {sorted(unknown)}; allowed: {sorted(HUB_KEYS)}")
    dataset_id = cfg.get("dataset_id")
    if not dataset_id:
        raise ValueError(f"{where}.dataset_id is required for source=hub, e.g. KodCode/KodCode-V1-SFT-R1")
    data_files = cfg.get("data_files")
    split_names = cfg.get("splits")
    if isinstance(data_files, Mapping):
        split_names = {s: s for s in SPLITS}

        def read(split):
            return read_table(data_files[split])
        origin = "local files"
    elif data_files:
        split_names = None

        def read(split):
            return read_table(data_files)
        origin = "local file"
    else:
        single = cfg.get("split", "train")

        def read(split):
            return read_hub_split(dataset_id, cfg.get("config"), split or single, revision=cfg.get("revision"))
        origin = "hub"
    splits, info = load_table_task(task, cfg, where, read, split_names)
    return splits, {"source": "hub", "dataset_id": dataset_id, "config": cfg.get("config"), "origin": origin, **info}
