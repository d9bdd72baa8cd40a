"""The paper-layout table from constructed sweep rows: best ratio per method, average, degradation."""

from __future__ import annotations

import math

import pytest

from mixmerge.sweep.paper_table import average, degradation, paper_rows, paper_table, sweep_verdict

REF = {"base/codegen/humaneval_pass@1": 0.20, "base/codegen/mbpp_pass@1": 0.30, "base/codesum/bleu4": 10.0,
       "specialist/codegen/codegen/humaneval_pass@1": 0.40, "specialist/codegen/codegen/mbpp_pass@1": 0.50,
       "specialist/codegen/codesum/bleu4": 8.0,
       "specialist/codesum/codegen/humaneval_pass@1": 0.10, "specialist/codesum/codegen/mbpp_pass@1": 0.20,
       "specialist/codesum/codesum/bleu4": 20.0,
       "mixture/codegen/humaneval_pass@1": 0.36, "mixture/codegen/mbpp_pass@1": 0.45, "mixture/codesum/bleu4": 18.0}


def _row(method, weight, he, mbpp, bleu):
    return {"job": f"{method}-{weight}", "method": method, "weight": weight, **REF,
            "merged/codegen/humaneval_pass@1": he, "merged/codegen/mbpp_pass@1": mbpp, "merged/codesum/bleu4": bleu}


ROWS = [_row("ties", 0.3, 0.30, 0.40, 16.0), _row("ties", 0.7, 0.38, 0.48, 12.0),
        _row("linear", 0.5, 0.20, 0.30, 15.0), _row("dare", 0.5, 0.40, 0.50, 20.0)]


def test_average_and_degradation_against_each_columns_specialist():
    scores = {"HumanEval": 38.0, "MBPP": 48.0, "CodeXGLUE BLEU": 12.0}
    assert math.isclose(average(scores), (38 + 48 + 12) / 3)
    # HumanEval 5% and MBPP 4% below the codegen specialist, BLEU 40% below the codesum specialist
    assert math.isclose(degradation(scores, {"codegen": {"HumanEval": 40.0, "MBPP": 50.0},
                                             "codesum": {"CodeXGLUE BLEU": 20.0}}), (5 + 4 + 40) / 3)


def test_rows_in_the_papers_order_with_each_method_at_its_best_ratio():
    rows = paper_rows(ROWS)
    assert [r["name"] for r in rows] == ["Base", "Specialist (codegen)", "Specialist (codesum)", "Data mixture",
                                         "Linear", "TIES", "DARE"]
    ties = rows[5]
    assert ties["weight"] == 0.7  # average 32.67 at 0.7 beats 28.67 at 0.3
    assert math.isclose(ties["average"], (38 + 48 + 12) / 3)
    assert math.isclose(ties["degradation"], (5 + 4 + 40) / 3)
    assert math.isclose(rows[6]["degradation"], 0.0)  # DARE matched both specialists
    assert math.isclose(rows[0]["degradation"], (50 + 40 + 50) / 3)


def test_markdown_layout():
    lines = paper_table(ROWS).splitlines()
    assert lines[0] == ("| Model | HumanEval | MBPP | CodeXGLUE BLEU | Average | "
                        "Degradation vs specialists (%) |")
    assert lines[2] == "| Base | 20.0 | 30.0 | 10.0 | 20.0 | 46.7 |"
    assert lines[7] == "| TIES (w=0.7) | 38.0 | 48.0 | 12.0 | 32.7 | 16.3 |"
    assert len(lines) == 2 + 7


def test_missing_metrics_show_a_dash_and_do_not_enter_the_average():
    rows = [{"method": "ties", "weight": 0.5, "base/codesum/bleu4": 10.0, "base/codegen/humaneval_pass@1": 0.2,
             "merged/codesum/bleu4": 12.0}]
    lines = paper_table(rows).splitlines()
    assert lines[2] == "| Base | 20.0 | — | 10.0 | 15.0 | — |"
    assert lines[3] == "| TIES (w=0.5) | — | — | 12.0 | 12.0 | — |"


def test_sweep_verdict_is_the_best_merge_of_all_jobs_against_the_mixture():
    rows = [{"job": str(i), "method": m, "weight": w, "mixture/aggregate": -2.247, "merged/aggregate": a}
            for i, (m, w, a) in enumerate([("ties", 0.3, -2.30), ("della", 0.5, -2.207), ("dare", 0.5, -2.248)])]
    assert sweep_verdict(rows) == ("Sweep verdict over 3 merges: winner = merge by 0.0400 aggregate "
                                   "(mixture -2.2470 vs best merge DELLA w=0.5, job 1, -2.2070). No intervals in "
                                   "these metrics.json files (written before ci95 existed): this difference is "
                                   "untested against noise.")
    worse = [{**r, "merged/aggregate": r["merged/aggregate"] - 1} for r in rows]
    assert sweep_verdict(worse).startswith("Sweep verdict over 3 merges: winner = mix by 0.9600 aggregate")
    no_mix = [{k: v for k, v in r.items() if not k.startswith("mixture")} for r in rows]
    assert sweep_verdict(no_mix) == "Sweep verdict: none; 3 jobs have merged/aggregate and no job has mixture/aggregate."


def _with_intervals(row, variant, half_width):
    """The row plus a symmetric interval of ``half_width`` around each of ``variant``'s metrics."""
    out = dict(row)
    for k, v in row.items():
        if k.startswith(variant + "/"):
            out[k + "_lo"], out[k + "_hi"] = v - half_width, v + half_width
    return out


def test_columns_with_an_interval_read_value_lo_hi_on_the_tables_scale():
    rows = [_with_intervals(_with_intervals(r, "merged", 0.02), "mixture", 0.5) for r in ROWS]
    rows[1] = {k: v for k, v in rows[1].items() if k != "merged/codesum/bleu4_lo"}  # half an interval: none
    lines = paper_table(rows).splitlines()
    # pass@1 on the 0-100 scale: 0.38 ± 0.02 -> 38.0 [36.0, 40.0]; BLEU is already 0-100, ± 0.02 -> 12.0 [12.0, 12.0]
    assert lines[7] == "| TIES (w=0.7) | 38.0 [36.0, 40.0] | 48.0 [46.0, 50.0] | 12.0 | 32.7 | 16.3 |"
    assert lines[5] == "| Data mixture | 36.0 [-14.0, 86.0] | 45.0 [-5.0, 95.0] | 18.0 [17.5, 18.5] | 33.0 | 10.0 |"
    assert lines[2] == "| Base | 20.0 | 30.0 | 10.0 | 20.0 | 46.7 |"  # no interval for the base in these rows
    assert lines[-1].startswith("[lo, hi]: 95 % bootstrap interval from each job's metrics.json.")
    dare = paper_rows(rows)[6]["intervals"]
    assert {k: pytest.approx(v) for k, v in dare.items()} == {"HumanEval": (38.0, 42.0), "MBPP": (48.0, 52.0),
                                                               "CodeXGLUE BLEU": (19.98, 20.02)}
    assert "[lo, hi]" not in paper_table(ROWS)  # old rows: no intervals, no footnote


def _verdict_rows(mix_ci=None, merge_ci=None, verdict=None):
    rows = []
    for i, (m, w, a) in enumerate([("ties", 0.3, 0.30), ("della", 0.5, 0.35), ("dare", 0.5, 0.20)]):
        r = {"job": str(i), "method": m, "weight": w, "mixture/aggregate": 0.33, "merged/aggregate": a}
        if mix_ci:
            r["mixture/aggregate_lo"], r["mixture/aggregate_hi"] = mix_ci
        if merge_ci:
            r["merged/aggregate_lo"], r["merged/aggregate_hi"] = a + merge_ci[0], a + merge_ci[1]
        if verdict:
            r.update({f"verdict/{k}": v for k, v in verdict.items()})
        rows.append(r)
    return rows


def test_sweep_verdict_is_not_separable_when_the_paired_interval_contains_zero():
    paired = {"winner": "not separable", "best_merge": "merged", "difference": -0.02, "difference_lo": -0.05,
              "difference_hi": 0.01, "p_value": 0.2}
    assert sweep_verdict(_verdict_rows(verdict=paired)) == (
        "Sweep verdict over 3 merges: not separable on aggregate: mixture − merge = -0.0200, 95 % CI "
        "[-0.0500, 0.0100], p = 0.2, paired on the same examples in job 1 (mixture 0.3300 vs best merge "
        "DELLA w=0.5, job 1, 0.3500; the best of 3 merges on the same evaluation, which favours the merge).")


def test_sweep_verdict_names_a_winner_when_the_paired_interval_excludes_zero():
    paired = {"winner": "merge", "best_merge": "merged", "difference": -0.02, "difference_lo": -0.03,
              "difference_hi": -0.01, "p_value": 0.001}
    line = sweep_verdict(_verdict_rows(verdict=paired))
    assert line.startswith("Sweep verdict over 3 merges: winner = merge by 0.0200 aggregate: mixture − merge = "
                           "-0.0200, 95 % CI [-0.0300, -0.0100], p = 0.001, paired")
    # No winner stated in the block: the interval decides, the same way.
    assert sweep_verdict(_verdict_rows(verdict={**paired, "winner": None})) == line
    # A verdict about another variant, or another metric than the aggregate, is not this comparison.
    other = sweep_verdict(_verdict_rows(verdict={**paired, "best_merge": "merged_b"}))
    assert "winner = merge by 0.0200 aggregate (" in other and "No intervals" in other
    assert "paired" not in sweep_verdict(_verdict_rows(verdict=paired), "codegen/loss")


def test_sweep_verdict_from_unpaired_intervals_when_there_is_no_paired_verdict():
    overlap = sweep_verdict(_verdict_rows(mix_ci=(0.30, 0.36), merge_ci=(-0.04, 0.04)))
    assert overlap.startswith("Sweep verdict over 3 merges: not separable on aggregate: unpaired: the 95 % "
                              "intervals, mixture [0.3000, 0.3600] and merge [0.3100, 0.3900], overlap")
    apart = sweep_verdict(_verdict_rows(mix_ci=(0.32, 0.34), merge_ci=(-0.005, 0.005)))
    assert apart.startswith("Sweep verdict over 3 merges: winner = merge by 0.0200 aggregate: unpaired: the 95 % "
                            "intervals, mixture [0.3200, 0.3400] and merge [0.3450, 0.3550], are disjoint")
    # Only one side has an interval: nothing to compare, so the old untested wording.
    assert "untested against noise" in sweep_verdict(_verdict_rows(mix_ci=(0.32, 0.34)))
