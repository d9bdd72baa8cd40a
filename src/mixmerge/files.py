"""Atomic writes: every result file or folder is written to a temporary name beside it and renamed into place.

A reader (a sweep report, a resumed run, a second job sharing the cache) therefore sees the old file or the
new one, never half a file. The temporary name is unique per call, so two writers never share one.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def _temporary_beside(path: Path) -> Path:
    """A hidden, unique name in ``path``'s folder (same file system, so the rename is atomic)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def _replace_with(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp)`` on a fresh temporary beside ``path``, then rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_beside(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """``text`` into ``path`` (newlines written as given, on every platform)."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            f.write(text)

    return _replace_with(path, write)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """``obj`` as indented JSON with sorted keys (stable diffs); what JSON cannot hold is written as ``str``."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> Path:
    """One JSON object per line, in the order given (per-problem records)."""
    return write_text_atomic(path, "".join(json.dumps(r, default=str) + "\n" for r in rows))


def save_figure_atomic(fig: Any, path: str | os.PathLike, **savefig_kwargs: Any) -> Path:
    """A matplotlib figure into ``path``; the format follows the suffix unless ``format=`` is given."""
    fmt = savefig_kwargs.pop("format", None) or Path(path).suffix.lstrip(".") or None
    return _replace_with(path, lambda tmp: fig.savefig(tmp, format=fmt, **savefig_kwargs))


# Folders (a merged model, a cached artifact) are built in a hidden sibling and renamed into place as a whole.
def _hidden_sibling(out: Path, role: str) -> Path:
    """``.<name>.<role>-<pid>-<random>`` next to ``out``: the pid tells a killed writer's leftovers from a
    running one's (``stale_folder_temporaries``)."""
    return out.parent / f".{out.name}.{role}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def stale_folder_temporaries(out: Path) -> list[tuple[Path, int | None]]:
    """The hidden temporary and replaced folders of writes into ``out``, each with its writer's pid (None
    for names without one)."""
    out = Path(out)
    if not out.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(?:tmp|old)-(?:(\d+)-)?[0-9a-f]{{8}}$")
    found = []
    for p in out.parent.iterdir():
        m = pattern.match(p.name)
        if m and p.is_dir() and not p.is_symlink():
            found.append((p, int(m.group(1)) if m.group(1) else None))
    return found


def temp_folder_beside(out: Path) -> Path:
    """A new hidden folder next to ``out`` to build it in (``publish_folder`` moves it into place)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _hidden_sibling(out, "tmp")
    tmp.mkdir()
    return tmp


def publish_folder(tmp: Path, out: Path) -> None:
    """Move a finished folder into place; an older folder at ``out`` is replaced as a whole."""
    out = Path(out)
    old = None
    if out.exists() or out.is_symlink():
        old = _hidden_sibling(out, "old")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None and old.is_symlink():
        old.unlink()
    elif old is not None:
        shutil.rmtree(old, ignore_errors=True)


def json_safe(obj):
    """NaN is not JSON: undefined numbers (NaN, inf) become null, through nested mappings and sequences."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj
