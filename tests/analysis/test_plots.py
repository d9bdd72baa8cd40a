import csv
import json
import math

import pytest

from mixmerge.analysis.plots import plot_analysis, write_tables
from mixmerge.analysis.stream import AnalysisResult


def _result() -> AnalysisResult:
    res = AnalysisResult(base="base", models=["a", "b"], pairs=[("a", "b")], num_layers=3)
    for model, scale in (("a", 1.0), ("b", 2.0)):
        for layer in (0, 1, 2, "all"):
            for module in ("q_proj", "down_proj", "all"):
                l2 = scale * (1 + (layer if isinstance(layer, int) else 3))
                res.norm_rows.append({"model": model, "layer": layer, "module": module, "l2": l2, "rms": l2 / 10,
                                      "base_l2": 10.0, "rel_l2": l2 / 10, "numel": 100})
    for layer, r in ((0, 0.9), (1, 0.5), (2, math.nan), ("all", 0.7)):
        for module in ("q_proj", "down_proj", "all"):
            res.pair_rows.append({"pair": "a ~ b", "model_a": "a", "model_b": "b", "layer": layer, "module": module,
                                  "pearson": r, "cosine": r, "sign_conflict_rate": 0.2, "numel": 100})
    return res


def test_plots_are_written_in_both_formats(tmp_path):
    paths = plot_analysis(_result(), tmp_path)
    stems = {p.stem for p in paths}
    assert stems == {"delta_l2_by_layer", "delta_l2_by_module", "pearson_by_layer", "cosine_by_layer",
                     "sign_conflict_rate_by_layer", "pearson_by_module"}
    assert {p.suffix for p in paths} == {".png", ".svg"}
    for p in paths:
        assert p.is_file() and p.stat().st_size > 1000
    assert (tmp_path / "delta_l2_by_layer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = (tmp_path / "pearson_by_layer.svg").read_text()
    assert "decoder layer index" in svg and "a ~ b" in svg
    assert not list(tmp_path.glob(".*.tmp"))


def test_plots_without_pairs_only_show_norms(tmp_path):
    res = _result()
    res.pairs, res.pair_rows = [], []
    paths = plot_analysis(res, tmp_path, formats=("png",))
    assert sorted(p.name for p in paths) == ["delta_l2_by_layer.png", "delta_l2_by_module.png"]


def test_tables_hold_every_number(tmp_path):
    res = _result()
    paths = write_tables(res, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert len(data["norm_rows"]) == len(res.norm_rows) == 24
    assert data["pair_rows"][6]["pearson"] is None  # NaN is written as null, the file stays valid JSON
    with paths["norms_csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 24
    assert float(rows[1]["l2"]) == pytest.approx(res.norm_rows[1]["l2"])
    with paths["pairs_csv"].open() as f:
        pair_rows = list(csv.DictReader(f))
    assert [float(r["pearson"]) for r in pair_rows if r["module"] == "all"][:2] == [0.9, 0.5]
