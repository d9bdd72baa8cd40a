"""Where a merge may write: ``merge.output`` checked before any work, and what a killed merge left behind.

A merge replaces its output folder as a whole (``files.publish_folder``), so an output that names an input,
the folder that holds the inputs, or someone's files would delete them. Refused: an output that equals,
contains or lies inside an input (symlinks resolved), a file, and a non-empty folder that is not an
earlier merge's output (no ``merge_report.json``) unless ``merge.overwrite=true``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from mixmerge.files import stale_folder_temporaries
from mixmerge.merge.io import REPORT


def check_output(out: Path, inputs: Sequence[tuple[str, Path]], *, overwrite: bool = False) -> None:
    """Raise (naming the field and the fix) unless ``out`` may be replaced by a merge of ``inputs``
    (``(field name, path)`` pairs). Reads only; modifies nothing."""
    out = Path(out)
    target = out.resolve()
    for field_name, path in inputs:
        src = Path(path).resolve()
        if target == src:
            relation = "is"
        elif src in target.parents:
            relation = "lies inside"
        elif target in src.parents:
            relation = "contains"
        else:
            continue
        raise ValueError(f"merge.output={str(out)!r} {relation} {field_name}={str(path)!r}; the merge replaces "
                         f"its output as a whole and would destroy that input. Choose another merge.output")
    if out.is_symlink() and not out.exists():
        raise ValueError(f"merge.output={str(out)!r} is a broken symlink; remove it or choose another folder")
    if out.exists() and not out.is_dir():
        raise ValueError(f"merge.output={str(out)!r} is a file, not a folder; choose a new folder name")
    if out.is_dir() and any(out.iterdir()) and not (out / REPORT).is_file() and not overwrite:
        raise ValueError(f"merge.output={str(out)!r} is a non-empty folder that no earlier merge wrote (it has no "
                         f"{REPORT}); a merge would replace all of it. Choose a new or empty folder, or pass "
                         f"merge.overwrite=true to replace it")


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Delete the hidden ``.<name>.tmp-*`` / ``.<name>.old-*`` folders that merges into ``out`` left when
    killed (their process is gone); a running merge's are kept. Returns what was removed."""
    removed = []
    for path, pid in stale_folder_temporaries(Path(out)):
        if pid is not None and _alive(pid):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
