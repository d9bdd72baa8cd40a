"""What the numbers support: intervals per variant, paired comparisons, the verdict and the degradation."""

from __future__ import annotations

import numpy as np
import pytest

from mixmerge.analysis.recommend import Recommendation, check_recommendation
from mixmerge.eval import aggregate
from mixmerge.eval import evidence as ev
from mixmerge.eval.aggregate import aggregate_function
from mixmerge.eval.uncertainty import Sample, mean_over_replicates
from mixmerge.report import format_table
from mixmerge.strategy.compare import describe_check, describe_verdict

EVAL_CFG = {"aggregate": {"method": "mean", "terms": {"codegen/humaneval_pass@1": 1.0, "codesum/bleu4": 0.01}}}
TASK_METRICS = {"codegen": "codegen/humaneval_pass@1", "codesum": "codesum/bleu4"}


def _measured(passed: list[int], bleu: list[float], loss: list[tuple[float, int]] | None = None) -> ev.Measured:
    """A variant evaluated on the same 0/1 problems, BLEU examples and (optionally) loss examples."""
    samples = {"codegen/humaneval_pass@1": Sample.of_scores({f"p{i}": float(x) for i, x in enumerate(passed)}),
               "codesum/bleu4": Sample.of_scores({f"s{i}": x for i, x in enumerate(bleu)})}
    if loss is not None:
        samples["codegen/loss"] = Sample.of_ratios({f"l{i}": x for i, x in enumerate(loss)})
    metrics = {name: s.value for name, s in samples.items()}
    metrics["aggregate"] = aggregate(metrics, EVAL_CFG)
    return ev.Measured(metrics, samples)


RNG = np.random.default_rng(3)
BLEU = list(RNG.uniform(0, 40, 60))


def test_intervals_have_the_metrics_keys_and_equal_a_direct_bootstrap():
    m = _measured([1, 0, 1, 1, 0, 0, 0, 1] * 5, BLEU, [(20.0, 10), (3.0, 2), (9.0, 4)])
    m = ev.Measured({**m.metrics, "lm_eval/x/acc_stderr": 0.1}, m.samples)
    ci95, n = ev.intervals(m, EVAL_CFG, seed=0, n_resamples=1000)
    assert set(ci95) == set(n) == set(m.metrics)
    assert ci95["lm_eval/x/acc_stderr"] is None and n["lm_eval/x/acc_stderr"] is None
    scores = np.asarray(BLEU)  # reference: the same seeded draws, written out
    idx = np.random.default_rng(0).integers(0, len(scores), size=(1000, len(scores)))
    assert ci95["codesum/bleu4"] == list(np.percentile(scores[idx].mean(axis=1), [2.5, 97.5]))
    nll, tok = np.asarray([20.0, 3.0, 9.0]), np.asarray([10, 2, 4])
    idx = np.random.default_rng(0).integers(0, 3, size=(1000, 3))
    assert ci95["codegen/loss"] == pytest.approx(list(np.percentile(nll[idx].sum(1) / tok[idx].sum(1), [2.5, 97.5])))
    assert n == {**n, "codegen/humaneval_pass@1": 40, "codesum/bleu4": 60, "codegen/loss": 3, "aggregate": 100}
    lo, hi = ci95["aggregate"]
    assert lo < m.metrics["aggregate"] < hi


def test_aggregate_function_is_the_aggregate_for_every_method():
    metrics = {"codegen/humaneval_pass@1": 0.25, "codesum/bleu4": 12.0, "codegen/loss": 2.0}
    for method in ("mean", "min", "weighted"):
        cfg = {"aggregate": {**EVAL_CFG["aggregate"], "method": method,
                             "weights": {"codegen/humaneval_pass@1": 3.0, "codesum/bleu4": 1.0}}}
        terms, combine = aggregate_function(metrics, cfg)
        assert terms == ["codegen/humaneval_pass@1", "codesum/bleu4"]
        assert float(combine({t: np.asarray(metrics[t]) for t in terms})) == pytest.approx(aggregate(metrics, cfg))


def test_a_known_difference_gives_a_winner_and_an_identical_pair_is_not_separable():
    strong = _measured([1] * 30 + [0] * 10, [b + 20 for b in BLEU])
    weak = _measured([1] * 8 + [0] * 32, BLEU)
    measured = {"mixture": strong, "merged": weak}
    comparisons = ev.paired_comparisons(measured, TASK_METRICS, EVAL_CFG, n_resamples=1000)
    verdict = ev.verdict(measured, comparisons)
    assert verdict["winner"] == "mix" and verdict["ci95"][0] > 0 and verdict["p_value"] < 0.001
    assert "mixing wins" in describe_verdict(verdict)
    same = {"mixture": weak, "merged": weak}
    verdict = ev.verdict(same, ev.paired_comparisons(same, TASK_METRICS, EVAL_CFG, n_resamples=1000))
    assert verdict["winner"] == "not separable" and verdict["difference"] == 0.0 and verdict["p_value"] == 1.0
    assert "not separable" in describe_verdict(verdict)


def test_one_problem_never_makes_a_hundred_percent_degradation():
    """The issue's case: the specialist passes 1 of 16 problems, the base and the merge none. The specialist
    is not significantly better than the base, so the codegen degradation is undefined, with the reason."""
    base = _measured([0] * 16, BLEU[:16])
    spec_gen = _measured([1] + [0] * 15, BLEU[:16])
    spec_sum = _measured([0] * 16, [b + 30 for b in BLEU[:16]])
    merged = _measured([0] * 16, [b + 25 for b in BLEU[:16]])
    mixture = _measured([0] * 16, [b + 26 for b in BLEU[:16]])
    measured = {"base": base, "specialist/codegen": spec_gen, "specialist/codesum": spec_sum, "mixture": mixture,
                "merged": merged}
    comparisons = ev.paired_comparisons(measured, TASK_METRICS, EVAL_CFG, n_resamples=1000)
    deg = ev.degradation(measured, "merged", {"codegen": "specialist/codegen", "codesum": "specialist/codesum"},
                         TASK_METRICS, comparisons, n_resamples=1000)
    assert [u["task"] for u in deg["undefined"]] == ["codegen"]
    assert "not significantly better than the base" in deg["undefined"][0]["reason"]
    codesum = deg["per_task"]["codesum"]  # BLEU: the specialist gained 30 points, the merge kept 25 of them
    s, m = spec_sum.metrics["codesum/bleu4"], merged.metrics["codesum/bleu4"]
    assert codesum["degradation"] == pytest.approx((s - m) / s) == deg["mean"]
    assert codesum["ci95"][0] <= codesum["degradation"] <= codesum["ci95"][1] and deg["mean_ci95"] == codesum["ci95"]
    verdict = ev.verdict(measured, comparisons)
    check = check_recommendation(Recommendation("merge", 0.1, ""), {k: {"metrics": v.metrics} for k, v in measured.items()},
                                 evidence={"verdict": verdict, "degradation": {"best_merge": deg}})
    line = describe_check(check)
    assert "100.0%" not in line and "Degradation on codegen undefined" in line
    if verdict["winner"] == "not separable":
        assert check["recommendation_check"] == "undecided" and "undecided" in line


def test_without_the_base_degradation_is_undefined_and_says_why():
    spec = _measured([1] * 20 + [0] * 20, BLEU)
    measured = {"specialist/codegen": spec, "merged": _measured([1] * 10 + [0] * 30, BLEU)}
    deg = ev.degradation(measured, "merged", {"codegen": "specialist/codegen"}, TASK_METRICS, [], n_resamples=1000)
    assert deg["per_task"] == {} and "base was not evaluated" in deg["undefined"][0]["reason"]


def test_the_comparison_plan_is_what_the_verdict_rests_on():
    plan = ev.comparison_plan(["base", "specialist/codegen", "specialist/codesum", "mixture", "merged"],
                              TASK_METRICS, EVAL_CFG)
    assert ("mixture", "merged", "aggregate") in plan
    assert ("merged", "specialist/codegen", "codegen/humaneval_pass@1") in plan
    assert ("merged", "specialist/codesum", "codesum/loss") in plan
    assert ("specialist/codesum", "base", "codesum/bleu4") in plan
    assert ("specialist/codegen", "base", "codesum/bleu4") not in plan  # each specialist on its own task


def test_mean_over_replicates_is_the_mean_of_the_seeds_values():
    a = Sample.of_ratios({"x": (4.0, 2), "y": (9.0, 3)})
    b = Sample.of_ratios({"y": (6.0, 3), "x": (2.0, 2)})
    mean = mean_over_replicates([a, b])
    assert mean.value == pytest.approx((a.value + b.value) / 2) and mean.ids == ("x", "y")


def test_the_table_shows_each_value_with_its_interval_and_spread():
    table = format_table({"merged": {"codegen/loss": 1.5, "lm_eval/t/acc": 0.5, "lm_eval/t/acc_stderr": 0.1}},
                         intervals={"merged": {"codegen/loss": [1.4, 1.6], "lm_eval/t/acc": [0.3, 0.7]}},
                         spreads={"merged": {"codegen/loss": 0.05}})
    assert "1.5000 [1.4000, 1.6000] sd 0.0500" in table and "0.5000 [0.3000, 0.7000]" in table
    assert "acc_stderr" not in table
