"""The paper-layout table from constructed sweep rows: best ratio per method, average, degradation."""

from __future__ import annotations

import math

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
                                   "(mixture -2.2470 vs best merge DELLA w=0.5, job 1, -2.2070).")
    worse = [{**r, "merged/aggregate": r["merged/aggregate"] - 1} for r in rows]
    assert sweep_verdict(worse).startswith("Sweep verdict over 3 merges: winner = mix by 0.9600 aggregate")
    no_mix = [{k: v for k, v in r.items() if not k.startswith("mixture")} for r in rows]
    assert sweep_verdict(no_mix) == "Sweep verdict: none; 3 jobs have merged/aggregate and no job has mixture/aggregate."
