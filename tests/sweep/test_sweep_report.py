"""The sweep report: rows from a directory of metrics.json files, CSV/Markdown, plots, best per method."""

import csv
import json

import pytest

from mixmerge.sweep.report import (
    best_per_method,
    collect_metrics,
    default_metric,
    format_best,
    pareto_rows,
    plot_weight_sweep,
    report_sweep,
    weight_sweep_series,
    write_report,
)


def _job(root, name, method, weight, codegen, codesum, objective=None, density=None):
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(f"- merge={method}\n- merge.weight={weight}\n")
    merge = {"method": method, "weight": weight, **({"density": density} if density is not None else {})}
    metrics = {
        "variants": {
            "merged": {"metrics": {"codegen/pass@1": codegen, "codesum/bleu4": codesum,
                                   "aggregate": (codegen + codesum) / 2}, "artifact": "m"},
            "specialist/codegen": {"metrics": {"codegen/pass@1": 0.6, "codesum/bleu4": 0.1,
                                               "aggregate": 0.35}, "artifact": "a"},
            "mixture": {"metrics": {"codegen/pass@1": 0.5, "codesum/bleu4": 0.3, "aggregate": 0.4},
                        "artifact": "b"},
        },
        "objective": objective if objective is not None else (codegen + codesum) / 2,
        "config": {"merge": merge, "seed": 0},
    }
    (job / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def sweep_dir(tmp_path):
    root = tmp_path / "sweep"
    for i, (method, w, cg, cs) in enumerate([("linear", 0.2, 0.30, 0.40), ("linear", 0.5, 0.45, 0.30),
                                             ("linear", 0.8, 0.55, 0.10), ("ties", 0.5, 0.50, 0.35),
                                             ("ties", 0.8, 0.60, 0.05)]):
        _job(root, str(i), method, w, cg, cs, objective=[cg, cs], density=0.5 if method == "ties" else None)
    (root / "10").mkdir()  # a job that crashed before writing metrics.json is skipped
    return root


def test_collect_metrics_flattens_each_job(sweep_dir):
    rows = collect_metrics(sweep_dir)
    assert [r["job"] for r in rows] == ["0", "1", "2", "3", "4"]
    r = rows[3]
    assert (r["method"], r["weight"], r["density"]) == ("ties", 0.5, 0.5)
    assert r["merged/codegen/pass@1"] == 0.5 and r["merged/aggregate"] == pytest.approx(0.425)
    assert r["mixture/aggregate"] == 0.4
    assert (r["objective_0"], r["objective_1"], r["objective"]) == (0.5, 0.35, None)
    assert r["overrides"] == "merge=ties merge.weight=0.5"


def test_best_per_method(sweep_dir):
    rows = collect_metrics(sweep_dir)
    best = best_per_method(rows, "merged/aggregate")
    assert {m: r["job"] for m, r in best.items()} == {"linear": "1", "ties": "3"}  # aggregates 0.35, 0.375, 0.325 | 0.425, 0.325
    worst = best_per_method(rows, "merged/codesum/bleu4", maximize=False)
    assert {m: r["weight"] for m, r in worst.items()} == {"linear": 0.8, "ties": 0.8}
    assert "best ties: merged/aggregate=0.425 job=3" in format_best(best, "merged/aggregate")


def test_pareto_rows(sweep_dir):
    front = pareto_rows(collect_metrics(sweep_dir))
    # (0.45, 0.30) is dominated by (0.50, 0.35); (0.55, 0.10) is not dominated by anything.
    assert sorted(r["job"] for r in front) == ["0", "2", "3", "4"]


def test_write_report_tables_and_plots(sweep_dir, tmp_path):
    rows = collect_metrics(sweep_dir)
    paths = write_report(rows, tmp_path / "report", metric="merged/aggregate")
    table = list(csv.DictReader(paths["csv"].open()))
    assert len(table) == 5 and float(table[4]["merged/codegen/pass@1"]) == 0.6
    assert list(table[0])[:3] == ["job", "method", "weight"]
    md = paths["markdown"].read_text()
    assert "| linear | 1 | 0.5 |" in md and "| ties | 3 | 0.5 | 0.5 |" in md
    for m in ("merged/aggregate", "merged/codegen/pass@1", "merged/codesum/bleu4"):
        assert paths[f"weight_sweep:{m}"].stat().st_size > 5000
    assert paths["pareto_plot"].stat().st_size > 5000
    front = list(csv.DictReader(paths["pareto_csv"].open()))
    assert sorted(r["trial"] for r in front) == ["0", "2", "3", "4"]
    with pytest.raises(ValueError, match="no rows"):
        write_report([], tmp_path / "empty")


def test_report_sweep_ranks_multi_objective_runs_by_the_merged_aggregate(sweep_dir, capsys):
    rows = collect_metrics(sweep_dir)
    assert default_metric(rows) == "merged/aggregate"  # the objectives are pairs here
    paths = report_sweep(sweep_dir)
    assert paths["markdown"].parent == sweep_dir / "report"
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("best linear: merged/aggregate=0.375 job=1")
    assert printed[1].startswith("best ties: merged/aggregate=0.425 job=3")


def _ci_job(root, name, method, weight, aggregate, half_width, *, verdict=None, objective=None,
            config_objective=None):
    """A job in the metrics.json shape with intervals: merged and mixture carry ci95 and n; ``half_width``
    None writes a null interval (a metric without per-example data)."""
    job = root / name
    job.mkdir(parents=True)
    ci = None if half_width is None else [round(aggregate - half_width, 6), round(aggregate + half_width, 6)]
    metrics = {
        "variants": {
            "merged": {"metrics": {"aggregate": aggregate, "codegen/loss": 2.0},
                       "ci95": {"aggregate": ci, "codegen/loss": None}, "n": {"aggregate": 200, "codegen/loss": None},
                       "artifact": "m"},
            "mixture": {"metrics": {"aggregate": 0.4}, "ci95": {"aggregate": [0.35, 0.45]}, "n": {"aggregate": 200},
                        "artifact": "b"},
        },
        "comparisons": [],
        "objective": aggregate if objective is None else objective,
        "config": {"merge": {"method": method, "weight": weight},
                   "objective": config_objective or {"variant": "merged", "metric": "aggregate",
                                                     "direction": "maximize", "statistic": "mean"}},
    }
    if verdict is not None:
        metrics["verdict"] = verdict
    (job / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def ci_sweep(tmp_path):
    root = tmp_path / "ci_sweep"
    _ci_job(root, "0", "linear", 0.2, 0.30, 0.05)
    _ci_job(root, "1", "linear", 0.5, 0.42, 0.04, verdict={
        "winner": "not separable", "best_merge": "merged", "difference": -0.02, "ci95": [-0.06, 0.02],
        "p_value": 0.31})
    _ci_job(root, "2", "linear", 0.8, 0.36, None)  # no interval for this job's aggregate
    _job(root, "3", "ties", 0.5, 0.50, 0.35)  # a job from before intervals, in the same folder
    return root


def test_collect_metrics_reads_intervals_and_the_verdict(ci_sweep):
    rows = collect_metrics(ci_sweep)
    r = rows[1]
    assert (r["merged/aggregate"], r["merged/aggregate_lo"], r["merged/aggregate_hi"]) == (0.42, 0.38, 0.46)
    assert (r["mixture/aggregate_lo"], r["mixture/aggregate_hi"]) == (0.35, 0.45)
    assert "merged/codegen/loss_lo" not in r  # a null interval adds no columns
    assert (r["verdict/winner"], r["verdict/difference"], r["verdict/difference_lo"], r["verdict/difference_hi"],
            r["verdict/p_value"]) == ("not separable", -0.02, -0.06, 0.02, 0.31)
    assert (r["objective_source"], r["objective_statistic"]) == ("merged/aggregate", "mean")
    assert "merged/aggregate_lo" not in rows[2] and "merged/aggregate_lo" not in rows[3]


def test_a_malformed_interval_is_an_error_naming_the_job(ci_sweep):
    path = ci_sweep / "0" / "metrics.json"
    data = json.loads(path.read_text())
    data["variants"]["merged"]["ci95"]["aggregate"] = [0.3]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"job 0 merged/aggregate: a ci95 entry must be \[lo, hi\] or null"):
        collect_metrics(ci_sweep)


def test_csv_gets_lo_hi_columns_and_markdown_shows_value_lo_hi(ci_sweep, tmp_path):
    rows = collect_metrics(ci_sweep)
    paths = write_report(rows, tmp_path / "report", metric="objective")
    reader = csv.DictReader(paths["csv"].open())
    header = reader.fieldnames
    i = header.index("merged/aggregate")
    assert header[i:i + 3] == ["merged/aggregate", "merged/aggregate_lo", "merged/aggregate_hi"]
    table = list(reader)
    assert (float(table[1]["merged/aggregate_lo"]), float(table[1]["merged/aggregate_hi"])) == (0.38, 0.46)
    assert table[2]["merged/aggregate_lo"] == "" and table[3]["merged/aggregate_lo"] == ""
    md = paths["markdown"].read_text()
    assert "merged/aggregate_lo" not in md  # folded into the column
    # best per method by the objective, with the metric it was computed from and its interval
    assert "| method | job | weight | objective | objective_statistic | merged/aggregate | overrides |" in md
    assert "| linear | 1 | 0.5 | 0.42 | mean | 0.42 [0.38, 0.46] |" in md
    assert "| ties | 3 | 0.5 | 0.425 |  | 0.425 |" in md  # the old job: no statistic recorded, no interval
    assert "| 0.36 |" in md and "0.36 [" not in md  # job 2's null interval: the value alone
    assert "| merged | -0.02 [-0.06, 0.02] | 0.31 | not separable |" in md  # the run's verdict, all-jobs table


def test_format_best_prints_the_interval(ci_sweep):
    best = best_per_method(collect_metrics(ci_sweep), "merged/aggregate")
    assert format_best(best, "merged/aggregate").splitlines()[0].startswith(
        "best linear: merged/aggregate=0.42 [0.38, 0.46] job=1")


def test_weight_sweep_series_and_the_bands_the_figure_draws(ci_sweep, tmp_path, monkeypatch):
    import numpy as np

    from mixmerge.sweep import report

    rows = collect_metrics(ci_sweep)
    series = weight_sweep_series(rows, "merged/aggregate")
    linear = series["lines"]["linear"]
    np.testing.assert_allclose(linear["weight"], [0.2, 0.5, 0.8])
    np.testing.assert_allclose(linear["value"], [0.30, 0.42, 0.36])
    np.testing.assert_allclose(linear["lo"], [0.25, 0.38, np.nan])
    np.testing.assert_allclose(linear["hi"], [0.35, 0.46, np.nan])
    assert np.isnan(series["lines"]["ties"]["lo"]).all()
    refs = series["references"]
    assert refs["mixture"] == {"value": 0.4, "lo": pytest.approx(0.35), "hi": pytest.approx(0.45)}
    assert refs["specialist/codegen"]["value"] == 0.35 and np.isnan(refs["specialist/codegen"]["lo"])

    drawn = {}
    real_save = report.save_figure_atomic

    def capture(fig, path, **kwargs):
        ax = fig.axes[0]
        drawn["bands"] = [c.get_paths()[0].vertices for c in ax.collections]
        drawn["spans"] = [(p.get_y(), p.get_y() + p.get_height()) for p in ax.patches]
        return real_save(fig, path, **kwargs)

    monkeypatch.setattr(report, "save_figure_atomic", capture)
    png = plot_weight_sweep(rows, "merged/aggregate", tmp_path / "sweep.png")
    assert png.stat().st_size > 5000
    (band,) = drawn["bands"]  # linear only: ties (an old job) has no interval
    # fill_between over the jobs that have an interval (weights 0.2 and 0.5): lower edge, then upper edge back
    ys = {(round(x, 6), round(y, 6)) for x, y in band}
    assert {(0.2, 0.25), (0.5, 0.38), (0.5, 0.46), (0.2, 0.35)} <= ys
    assert all(x <= 0.5 + 1e-9 for x, _ in band)  # nothing drawn at 0.8, whose interval is null
    (span,) = drawn["spans"]  # the mixture's interval as a horizontal band
    assert span == (pytest.approx(0.35), pytest.approx(0.45))


def test_old_sweeps_plot_without_bands(sweep_dir, tmp_path, monkeypatch):
    from mixmerge.sweep import report

    counted = {}
    real_save = report.save_figure_atomic

    def capture(fig, path, **kwargs):
        counted["bands"] = len(fig.axes[0].collections) + len(fig.axes[0].patches)
        return real_save(fig, path, **kwargs)

    monkeypatch.setattr(report, "save_figure_atomic", capture)
    assert plot_weight_sweep(collect_metrics(sweep_dir), "merged/aggregate", tmp_path / "old.png") is not None
    assert counted["bands"] == 0


def test_replicates_spread_becomes_an_sd_column(tmp_path):
    root = tmp_path / "rep"
    _ci_job(root, "0", "ties", 0.5, 0.42, 0.04)
    path = root / "0" / "metrics.json"
    data = json.loads(path.read_text())
    data["variants"]["merged"].update({"seeds": {"0": {"aggregate": 0.41}, "1": {"aggregate": 0.43}},
                                       "spread": {"aggregate": 0.0141, "codegen/loss": None}})
    path.write_text(json.dumps(data))
    rows = collect_metrics(root)
    assert rows[0]["merged/aggregate_sd"] == 0.0141 and "merged/codegen/loss_sd" not in rows[0]
    paths = write_report(rows, tmp_path / "report", metric="merged/aggregate")
    header = paths["csv"].read_text().splitlines()[0].split(",")
    i = header.index("merged/aggregate")
    assert header[i:i + 4] == ["merged/aggregate", "merged/aggregate_lo", "merged/aggregate_hi", "merged/aggregate_sd"]
    assert "| 0.42 [0.38, 0.46] sd=0.0141 |" in paths["markdown"].read_text()
