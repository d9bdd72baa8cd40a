"""`strategy=report` on a constructed sweep folder: the sweep table, the paper-style table and the verdict."""

from __future__ import annotations

import json

from mixmerge.strategy.report import run
from mixmerge.tracking import Tracker

REFERENCE = {
    "base": {"codegen/humaneval_pass@1": 0.10, "codesum/bleu4": 5.0, "aggregate": 0.075},
    "specialist/codegen": {"codegen/humaneval_pass@1": 0.40, "codesum/bleu4": 4.0, "aggregate": 0.22},
    "specialist/codesum": {"codegen/humaneval_pass@1": 0.05, "codesum/bleu4": 20.0, "aggregate": 0.125},
    "mixture": {"codegen/humaneval_pass@1": 0.30, "codesum/bleu4": 18.0, "aggregate": 0.24},
}


def _sweep(tmp_path, jobs, reference=REFERENCE):
    sweep = tmp_path / "sweep"
    for i, (method, weight, merged) in enumerate(jobs):
        job = sweep / str(i)
        job.mkdir(parents=True)
        variants = {v: {"metrics": m} for v, m in {**reference, "merged": merged}.items()}
        (job / "metrics.json").write_text(json.dumps({
            "variants": variants, "objective": merged["aggregate"],
            "config": {"merge": {"method": method, "weight": weight}}}))
    return sweep


def _report(tmp_path, sweep, capsys):
    cfg = {"strategy": {"name": "report", "sweep_dir": str(sweep), "metric": None, "maximize": True}}
    run(cfg, store=None, run_dir=tmp_path / "run", tracker=Tracker(tmp_path / "run", {}))
    return capsys.readouterr().out


def test_report_prints_the_paper_table_and_the_sweeps_verdict(tmp_path, capsys):
    sweep = _sweep(tmp_path, [
        ("ties", 0.3, {"codegen/humaneval_pass@1": 0.36, "codesum/bleu4": 16.0, "aggregate": 0.26}),
        ("ties", 0.7, {"codegen/humaneval_pass@1": 0.38, "codesum/bleu4": 10.0, "aggregate": 0.24}),
        ("dare", 0.5, {"codegen/humaneval_pass@1": 0.20, "codesum/bleu4": 12.0, "aggregate": 0.16}),
    ])
    out = _report(tmp_path, sweep, capsys)
    assert "| Model | HumanEval | MBPP | CodeXGLUE BLEU | Average | Degradation vs specialists (%) |" in out
    assert "| Data mixture | 30.0 | — | 18.0 | 24.0 | 17.5 |" in out  # (25 + 10) / 2 below the specialists
    assert "| TIES (w=0.3) | 36.0 | — | 16.0 | 26.0 | 15.0 |" in out  # ties at its best average
    assert ("Sweep verdict over 3 merges: winner = merge by 0.0200 aggregate "
            "(mixture 0.2400 vs best merge TIES w=0.3, job 0, 0.2600).") in out
    written = (tmp_path / "run" / "report" / "paper_table.md").read_text()
    assert "| TIES (w=0.3) |" in written and "Sweep verdict over 3 merges" in written
    assert (tmp_path / "run" / "report" / "report.md").is_file()


def test_a_quick_sweep_says_what_the_paper_table_needs(tmp_path, capsys):
    quick = {v: {"codegen/loss": 2.0, "aggregate": -2.0} for v in REFERENCE}
    sweep = _sweep(tmp_path, [("ties", 0.5, {"codegen/loss": 1.9, "aggregate": -1.9})], reference=quick)
    out = _report(tmp_path, sweep, capsys)
    assert "No job has codegen/humaneval_pass@1, codegen/mbpp_pass@1, codesum/bleu4: the paper-style table" in out
    assert "Sweep verdict over 1 merge: winner = merge by 0.1000 aggregate" in out


def test_report_with_intervals_shows_them_and_says_not_separable(tmp_path, capsys):
    """metrics.json in the shape with ci95, n and the run's paired verdict (mixture − merge on the aggregate)."""
    sweep = tmp_path / "sweep"
    for i, (weight, merged_he, merged_agg, verdict_ci) in enumerate([(0.3, 0.36, 0.26, [-0.05, 0.01]),
                                                                     (0.7, 0.38, 0.24, [-0.03, 0.03])]):
        variants = {}
        for name, metrics in {**REFERENCE, "merged": {"codegen/humaneval_pass@1": merged_he, "codesum/bleu4": 16.0,
                                                      "aggregate": merged_agg}}.items():
            variants[name] = {"metrics": metrics, "artifact": name,
                              "ci95": {k: [round(v * 0.9, 6), round(v * 1.1, 6)] for k, v in metrics.items()},
                              "n": {k: 164 for k in metrics}}
        diff = REFERENCE["mixture"]["aggregate"] - merged_agg
        job = sweep / str(i)
        job.mkdir(parents=True)
        (job / "metrics.json").write_text(json.dumps({
            "variants": variants, "comparisons": [],
            "verdict": {"winner": "not separable", "best_merge": "merged", "difference": diff, "ci95": verdict_ci,
                        "p_value": 0.4},
            "objective": merged_agg,
            "config": {"merge": {"method": "ties", "weight": weight},
                       "objective": {"variant": "merged", "metric": "aggregate", "direction": "maximize",
                                     "statistic": "mean"}}}))
    out = _report(tmp_path, sweep, capsys)
    # the paper table takes each method at its best column average (w=0.7 here), the verdict its best aggregate
    assert "| TIES (w=0.7) | 38.0 [34.2, 41.8] | — | 16.0 [14.4, 17.6] | 27.0 | 12.5 |" in out
    assert "| Data mixture | 30.0 [27.0, 33.0] | — | 18.0 [16.2, 19.8] | 24.0 | 17.5 |" in out
    assert ("Sweep verdict over 2 merges: not separable on aggregate: mixture − merge = -0.0200, 95 % CI "
            "[-0.0500, 0.0100], p = 0.4, paired on the same examples in job 0 (mixture 0.2400 vs best merge TIES w=0.3, "
            "job 0, 0.2600; the best of 2 merges on the same evaluation, which favours the merge).") in out
    assert "best ties: objective=0.26 job=0" in out
    report_md = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "| ties | 0 | 0.3 | 0.26 | mean | 0.26 [0.234, 0.286] |" in report_md
    header = (tmp_path / "run" / "report" / "report.csv").read_text().splitlines()[0].split(",")
    assert header[header.index("merged/aggregate") + 1:][:2] == ["merged/aggregate_lo", "merged/aggregate_hi"]
