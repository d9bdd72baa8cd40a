import math

import pytest

from mixmerge.analysis.recommend import (
    Recommendation,
    check_recommendation,
    correlation_profile,
    recommend,
    relative_degradation,
)
from mixmerge.analysis.stream import AnalysisResult

TH = {"r_mix": 0.7, "r_merge": 0.4}


def test_high_correlation_recommends_mix():
    rec = recommend({"r_by_layer": {0: 0.8, 1: 0.75, 2: 0.9}}, TH)
    assert rec.choice == "mix"
    assert rec.r_mean == pytest.approx(0.8166666, abs=1e-6)
    assert "0.817" in rec.reason


def test_low_correlation_recommends_merge_and_middle_is_uncertain():
    assert recommend({"r_by_layer": [0.1, 0.2, 0.3]}, TH).choice == "merge"
    assert recommend({"r_by_layer": [0.5, 0.6]}, TH).choice == "uncertain"
    # boundaries are inclusive
    assert recommend({"r_by_layer": [0.7]}, TH).choice == "mix"
    assert recommend({"r_by_layer": [0.4]}, TH).choice == "merge"


def test_overall_statistic_and_nan_layers():
    prof = {"r_by_layer": [0.9, math.nan, 0.9], "r_overall": 0.2}
    assert recommend(prof, TH).r_mean == pytest.approx(0.9)  # NaN layers (untouched) are skipped
    rec = recommend(prof, {**TH, "statistic": "overall"})
    assert (rec.choice, rec.r_mean) == ("merge", 0.2)
    assert recommend({"r_by_layer": [math.nan]}, TH).choice == "uncertain"


def test_bad_thresholds_name_the_config_field():
    with pytest.raises(ValueError, match="analysis.thresholds"):
        recommend({"r_by_layer": [0.5]}, {"r_mix": 0.3, "r_merge": 0.6})
    with pytest.raises(ValueError, match="r_merge"):
        recommend({"r_by_layer": [0.5]}, {"r_mix": 0.7})
    with pytest.raises(ValueError, match="statistic"):
        recommend({"r_by_layer": [0.5]}, {**TH, "statistic": "median"})


def test_profile_from_an_analysis_result():
    res = AnalysisResult(base="b", models=["x", "y"], pairs=[("x", "y")], num_layers=2)
    for layer, r in ((0, 0.9), (1, 0.7), ("all", 0.85)):
        res.pair_rows.append({"pair": "x ~ y", "layer": layer, "module": "all", "pearson": r})
        res.pair_rows.append({"pair": "x ~ y", "layer": layer, "module": "q_proj", "pearson": -1.0})
    prof = correlation_profile(res)
    assert prof == {"pair": "x ~ y", "r_by_layer": {0: 0.9, 1: 0.7}, "r_overall": 0.85}
    rec = recommend(prof, TH, source="probe")
    assert rec.choice == "mix" and rec.source == "probe" and "probe vectors of x ~ y" in rec.reason
    with pytest.raises(ValueError, match="not in the analysis"):
        correlation_profile(res, ("x", "z"))


METRICS = {
    "base": {"codegen/humaneval_pass@1": 0.10, "codesum/bleu4": 5.0, "aggregate": 0.075},
    "specialist/codegen": {"codegen/humaneval_pass@1": 0.40, "codesum/bleu4": 4.0, "aggregate": 0.22},
    "specialist/codesum": {"codegen/humaneval_pass@1": 0.05, "codesum/bleu4": 20.0, "aggregate": 0.125},
    "mixture": {"codegen/humaneval_pass@1": 0.30, "codesum/bleu4": 18.0, "aggregate": 0.24},
    "merged/ties": {"metrics": {"codegen/humaneval_pass@1": 0.36, "codesum/bleu4": 16.0, "aggregate": 0.26}},
    "merged/linear": {"codegen/humaneval_pass@1": 0.30, "codesum/bleu4": 10.0, "aggregate": 0.20},
}


def test_check_names_the_winner_margin_and_degradation():
    rec = Recommendation("mix", 0.8, "test")
    out = check_recommendation(rec, METRICS)
    assert out["best_merge"] == "merged/ties"
    assert out["winner"] == "merge"
    assert out["margin"] == pytest.approx(0.02)
    assert out["recommendation_correct"] is False
    deg = out["degradation"]["best_merge"]
    # codegen: (0.40 - 0.36) / 0.40 = 0.10; codesum: (20 - 16) / 20 = 0.20; mean 0.15
    assert deg["per_task"]["codegen"]["degradation"] == pytest.approx(0.10)
    assert deg["per_task"]["codesum"]["degradation"] == pytest.approx(0.20)
    assert deg["mean"] == pytest.approx(0.15)
    assert deg["retention"] == pytest.approx(0.85)
    # mixture: (0.4-0.3)/0.4 = 0.25, (20-18)/20 = 0.1
    assert out["degradation"]["mixture"]["mean"] == pytest.approx(0.175)


def test_check_when_mixture_wins_and_when_merges_are_missing():
    metrics = dict(METRICS)
    metrics["mixture"] = {**METRICS["mixture"], "aggregate": 0.30}
    out = check_recommendation(Recommendation("mix", 0.8, ""), metrics)
    assert (out["winner"], out["recommendation_correct"]) == ("mix", True)
    assert out["margin"] == pytest.approx(0.04)
    out = check_recommendation(Recommendation("uncertain", 0.5, ""), metrics)
    assert out["recommendation_correct"] is None
    only = {k: v for k, v in METRICS.items() if not k.startswith("merged")}
    out = check_recommendation(Recommendation("merge", 0.1, ""), only)
    assert out["winner"] is None and out["notes"]
    assert "best_merge" not in out["degradation"]


def test_check_needs_a_task_metric_for_every_specialist():
    metrics = {**METRICS, "specialist/docs": {"aggregate": 0.1}}
    with pytest.raises(ValueError, match="analysis.check.task_metrics"):
        check_recommendation(Recommendation("mix", 0.8, ""), metrics)
    metrics = {k: v for k, v in METRICS.items() if k != "specialist/codegen"}
    out = check_recommendation(Recommendation("mix", 0.8, ""), metrics, task_metrics={"codesum": "aggregate"})
    assert out["degradation"]["best_merge"]["per_task"]["codesum"]["degradation"] == pytest.approx(1 - 0.26 / 0.125)


def test_relative_degradation_definition():
    assert relative_degradation(0.909, 0.927) == pytest.approx(-0.0198, abs=1e-4)  # merge beat specialist
    assert math.isnan(relative_degradation(0.0, 0.1))


def test_check_names_what_it_could_not_compute_instead_of_failing():
    """eval=quick computes the held-out loss only: the verdict stands, the degradation says what is missing."""
    quick = {v: {"codesum/bleu4": m["codesum/bleu4"], "aggregate": m["aggregate"]}
             for v, m in ((v, m.get("metrics", m)) for v, m in METRICS.items())}
    quick["merged/ties"].pop("codesum/bleu4")
    out = check_recommendation(Recommendation("mix", 0.8, ""), quick)
    assert (out["winner"], out["best_merge"]) == ("merge", "merged/ties")
    best = out["degradation"]["best_merge"]
    assert best["per_task"] == {} and math.isnan(best["mean"])
    assert [(m["task"], m["missing_for"]) for m in best["not_computed"]] == [
        ("codegen", ["specialist/codegen", "merged/ties"]), ("codesum", ["merged/ties"])]
    mix = out["degradation"]["mixture"]
    assert mix["per_task"]["codesum"]["degradation"] == pytest.approx(0.1)  # (20 - 18) / 20
    assert [m["task"] for m in mix["not_computed"]] == ["codegen"]
    assert any("no best merge degradation on codegen: 'codegen/humaneval_pass@1' was not evaluated for "
               "specialist/codegen and merged/ties" in n for n in out["notes"])
    assert any("analysis.check.task_metrics.codesum" in n for n in out["notes"])
