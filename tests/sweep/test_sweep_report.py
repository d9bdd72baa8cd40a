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
    report_sweep,
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
