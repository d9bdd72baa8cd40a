"""merge.output never destroys data: an output naming an input, a folder holding one, a folder inside one,
a file or someone's non-empty folder is refused before any work, and every input keeps its bytes."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from mixmerge.merge import standalone
from mixmerge.merge.io import REPORT


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def inputs(tiny_base, specialists, tmp_path):
    """Copies of the base and the specialists (a failing test must not destroy the session's)."""
    root = tmp_path / "inputs"
    base = shutil.copytree(tiny_base, root / "base")
    models = [shutil.copytree(s, root / f"spec{i}") for i, s in enumerate(specialists)]
    return root, base, models


def _cfg(base, models, output, **extra):
    return {"method": "task_arithmetic", "base": str(base), "models": [str(m) for m in models],
            "output": str(output), **extra}


@pytest.mark.parametrize(("where", "message"), [
    ("base", r"merge.output=.* is merge.base="),
    ("model", r"merge.output=.* is merge.models\[1\]="),
    ("holder", r"merge.output=.* contains merge.base="),
    ("inside", r"merge.output=.* lies inside merge.base="),
    ("symlink", r"merge.output=.* is merge.base="),
])
def test_output_that_is_contains_or_lies_in_an_input_is_refused(where, message, inputs, tmp_path):
    root, base, models = inputs
    before = _digest(root)
    output = {"base": base, "model": models[1], "holder": root, "inside": base / "merged",
              "symlink": tmp_path / "link"}[where]
    if where == "symlink":
        os.symlink(base, output)
    for overwrite in (False, True):  # merge.overwrite never lets a merge replace its own inputs
        with pytest.raises(ValueError, match=message):
            standalone.run(_cfg(base, models, output, overwrite=overwrite))
    assert _digest(root) == before
    assert sorted(p.name for p in root.iterdir()) == ["base", "spec0", "spec1"]  # no temporary left


def test_file_and_foreign_folder_are_refused_unless_overwrite(inputs, tmp_path):
    root, base, models = inputs
    before = _digest(root)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    with pytest.raises(ValueError, match=r"merge.output=.* is a file"):
        standalone.run(_cfg(base, models, a_file))
    assert a_file.read_text() == "mine"
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "chapter1.tex").write_text("precious")
    with pytest.raises(ValueError, match=r"non-empty folder that no earlier merge wrote.*merge.overwrite=true"):
        standalone.run(_cfg(base, models, folder))
    assert (folder / "chapter1.tex").read_text() == "precious"
    assert _digest(root) == before
    report = standalone.run(_cfg(base, models, folder, overwrite=True))
    assert (folder / REPORT).is_file() and not (folder / "chapter1.tex").exists()
    assert report["output"] == str(folder)
    assert _digest(root) == before


def test_empty_folder_and_an_earlier_merge_are_replaced(inputs, tmp_path):
    root, base, models = inputs
    empty = tmp_path / "empty"
    empty.mkdir()
    standalone.run(_cfg(base, models, empty))
    first = _digest(empty)
    report = standalone.run(_cfg(base, models, empty, weights=[0.3, 0.3]))  # rerun into its own output
    assert report["parameters"]["weights"] == [0.3, 0.3]
    changed = _digest(empty)
    assert changed.keys() == first.keys() and changed["model.safetensors"] != first["model.safetensors"]


def test_killed_merges_leftovers_are_removed(inputs, tmp_path):
    root, base, models = inputs
    out = tmp_path / "merged"
    dead_pid = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # no process can have it
    stale = [tmp_path / f".merged.tmp-{dead_pid}-0123abcd", tmp_path / f".merged.old-{dead_pid}-89abcdef",
             tmp_path / ".merged.tmp-deadbeef"]  # the last: named before writers put their pid in
    running = tmp_path / f".merged.tmp-{os.getpid()}-00000000"  # a live writer's: kept
    unrelated = tmp_path / ".other.tmp-deadbeef"
    for p in [*stale, running, unrelated]:
        p.mkdir()
        (p / "model.safetensors").write_bytes(b"partial")
    standalone.run(_cfg(base, models, out))
    assert not any(p.exists() for p in stale)
    assert running.exists() and unrelated.exists()
    assert (out / REPORT).is_file()


@pytest.mark.parametrize("value", [0, -5])
def test_shard_size_must_be_positive(value, inputs, tmp_path):
    _, base, models = inputs
    with pytest.raises(ValueError, match=r"merge.shard_size_mb=.* must be a positive number"):
        standalone.run(_cfg(base, models, tmp_path / "out", shard_size_mb=value))
    assert not (tmp_path / "out").exists()


def test_unknown_merge_key_suggests_the_close_one(inputs, tmp_path):
    _, base, models = inputs
    with pytest.raises(ValueError, match=r"merge.densty is not a known merge setting; did you mean 'density'"):
        standalone.run(_cfg(base, models, tmp_path / "out", densty=0.3))
    assert not (tmp_path / "out").exists()
