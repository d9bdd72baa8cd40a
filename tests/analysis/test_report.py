import json

import pytest

from mixmerge.analysis import (
    analyze_models,
    check_recommendation,
    correlation_profile,
    plot_analysis,
    recommend,
    write_analysis_report,
    write_tables,
)
from mixmerge.analysis.wandb_log import analysis_log_payload, log_analysis

METRICS = {
    "specialist/codegen": {"codegen/humaneval_pass@1": 0.40, "codesum/bleu4": 4.0, "aggregate": 0.22},
    "specialist/codesum": {"codegen/humaneval_pass@1": 0.05, "codesum/bleu4": 20.0, "aggregate": 0.125},
    "mixture": {"codegen/humaneval_pass@1": 0.30, "codesum/bleu4": 18.0, "aggregate": 0.24},
    "merged": {"codegen/humaneval_pass@1": 0.36, "codesum/bleu4": 16.0, "aggregate": 0.26},
}


@pytest.fixture(scope="module")
def end_to_end(tiny_base, tmp_path_factory, make_variant, make_correlated):
    """Specialists with r≈0.9 task vectors, a 'merged' model at their mean, analysed and reported."""
    from safetensors.torch import load_file

    state = load_file(str(tiny_base / "model.safetensors"))
    root = tmp_path_factory.mktemp("e2e")
    da, db = {}, {}
    for i, name in enumerate(n for n in state if "proj" in n):
        da[name], db[name] = make_correlated(state[name].shape, 0.9, seed=100 + i)
    folders = {
        "specialist/codegen": make_variant(tiny_base, root / "gen", da),
        "specialist/codesum": make_variant(tiny_base, root / "sum", db),
        "merged": make_variant(tiny_base, root / "merged", {n: (da[n] + db[n]) / 2 for n in da}),
    }
    result = analyze_models(tiny_base, folders, pairs=[("specialist/codegen", "specialist/codesum")])
    out = root / "analysis"
    rec = recommend(correlation_profile(result), {"r_mix": 0.7, "r_merge": 0.4})
    check = check_recommendation(rec, METRICS)
    plots = plot_analysis(result, out)
    tables = write_tables(result, out)
    report = write_analysis_report(result, rec, check, out, plots=plots)
    return result, rec, check, plots, tables, report


def test_end_to_end_recommends_mix_and_reports_the_check(end_to_end):
    result, rec, check, plots, tables, report = end_to_end
    assert rec.choice == "mix" and rec.r_mean == pytest.approx(0.9, abs=0.03)
    assert check["winner"] == "merge" and check["recommendation_correct"] is False
    text = report.read_text()
    assert "**mix**" in text
    assert "Winner on `aggregate`: **merge**" in text
    assert "mean 15.0% (retains 85.0%)" in text  # (0.4-0.36)/0.4 and (20-16)/20, averaged
    assert "![delta_l2_by_layer](delta_l2_by_layer.png)" in text
    assert len(plots) == 12
    data = json.loads(tables["json"].read_text())
    assert data["pairs"] == [["specialist/codegen", "specialist/codesum"]]
    # the merge at the midpoint of the two task vectors: its delta norm is between r-weighted bounds
    n_gen, n_merged = result.norm("specialist/codegen"), result.norm("merged")
    assert n_merged == pytest.approx(n_gen * ((1 + 0.9) / 2) ** 0.5, rel=0.03)


def test_wandb_logging_with_a_disabled_run(end_to_end, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "disabled")
    result, rec, check, plots, _, _ = end_to_end
    payload = analysis_log_payload(result, rec, check)
    assert payload["analysis/recommendation"] == "mix"
    assert payload["analysis/best_merge_degradation"] == pytest.approx(0.15)
    run = wandb.init(mode="disabled")
    try:
        log_analysis(run, result, plots, rec, check)
    finally:
        run.finish()
