"""The line a compare run prints about its own merge: the verdict, the cost, and what it could not compute."""

from __future__ import annotations

from mixmerge.analysis.recommend import Recommendation, check_recommendation
from mixmerge.strategy.compare import describe_check

QUICK = {  # eval=quick: held-out loss only, so no task metric for the degradation figure
    "specialist/codegen": {"codegen/loss": 2.0, "aggregate": -2.1},
    "specialist/codesum": {"codegen/loss": 2.4, "aggregate": -2.2},
    "mixture": {"codegen/loss": 2.1, "aggregate": -2.0},
    "merged": {"codegen/loss": 2.2, "aggregate": -2.3},
}


def test_quick_evaluation_gives_the_verdict_and_names_what_was_not_computed():
    line = describe_check(check_recommendation(Recommendation("merge", 0.1, ""), QUICK))
    assert line == ("Measured on this run's merge: winner = mix by 0.3000 aggregate (mixture -2.0000 vs best merge "
                    "merged -2.3000); the recommendation was wrong. Not computed: degradation on "
                    "codegen/humaneval_pass@1, codesum/bleu4 (not evaluated in this run).")


def test_without_a_mixture_there_is_no_verdict_and_no_crash():
    no_mix = {k: v for k, v in QUICK.items() if k != "mixture"}
    line = describe_check(check_recommendation(Recommendation("merge", 0.1, ""), no_mix))
    assert line.startswith("Measured on this run's merge: winner = None by n/a aggregate (mixture n/a vs best merge "
                           "merged -2.3000); no check")
