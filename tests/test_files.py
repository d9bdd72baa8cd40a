"""Atomic writes (mixmerge.files): the content lands whole, nothing temporary is left, a failed write keeps
the old file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixmerge.files import save_figure_atomic, write_json_atomic, write_jsonl_atomic, write_text_atomic


def test_text_json_and_jsonl_land_whole_with_no_temporary_left(tmp_path):
    text = write_text_atomic(tmp_path / "deep" / "a.md", "| a |\r\n")
    assert text.read_bytes() == b"| a |\r\n"  # newlines as given
    js = write_json_atomic(tmp_path / "m.json", {"b": float("nan"), "a": tmp_path})
    assert js.read_text() == json.dumps({"a": str(tmp_path), "b": float("nan")}, indent=2) + "\n"  # sorted keys
    rows = write_jsonl_atomic(tmp_path / "r.jsonl", [{"id": 1}, {"id": 2}])
    assert [json.loads(line) for line in rows.read_text().splitlines()] == [{"id": 1}, {"id": 2}]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.md", "deep", "m.json", "r.jsonl"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    class HalfWritten:
        def savefig(self, path, **kwargs):
            Path(path).write_text("half a figure")
            raise OSError("disk full")

    path = write_text_atomic(tmp_path / "f.png", "the old figure")
    with pytest.raises(OSError, match="disk full"):
        save_figure_atomic(HalfWritten(), path)
    assert path.read_text() == "the old figure"
    assert [p.name for p in tmp_path.iterdir()] == ["f.png"]


def test_a_figure_is_saved_in_the_format_of_its_suffix(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    png = save_figure_atomic(fig, tmp_path / "f.png", dpi=50)
    svg = save_figure_atomic(fig, tmp_path / "f.svg")
    plt.close(fig)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and b"<svg" in svg.read_bytes()[:500]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png", "f.svg"]
