import pytest

from mixmerge.eval.aggregate import aggregate

METRICS = {"codegen/humaneval_pass@1": 0.25, "codesum/bleu4": 15.0, "codegen/loss": 1.2, "codesum/loss": 2.0}


def test_default_is_mean_of_normalised_task_scores():
    assert aggregate(METRICS, {}) == pytest.approx((0.25 + 0.15) / 2)


def test_weighted_min_and_loss_terms():
    cfg = {"aggregate": {"method": "weighted", "terms": {"codegen/humaneval_pass@1": 1.0, "codesum/bleu4": 0.01},
                         "weights": {"codegen/humaneval_pass@1": 3, "codesum/bleu4": 1}}}
    assert aggregate(METRICS, cfg) == pytest.approx((3 * 0.25 + 0.15) / 4)
    assert aggregate(METRICS, {"aggregate": {"method": "min"}}) == pytest.approx(0.15)
    losses = {"aggregate": {"terms": {"codegen/loss": -1.0, "codesum/loss": -1.0, "codesum/bleu4": None}}}
    assert aggregate(METRICS, losses) == pytest.approx(-1.6)


def test_missing_terms_are_skipped_and_errors_name_the_field():
    assert aggregate({"codesum/bleu4": 40.0}, {}) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="eval.aggregate.terms"):
        aggregate({"codegen/loss": 1.0}, {})
    with pytest.raises(ValueError, match="eval.aggregate.method"):
        aggregate(METRICS, {"aggregate": {"method": "median"}})
    with pytest.raises(ValueError, match="eval.aggregate.weights"):
        aggregate(METRICS, {"aggregate": {"method": "weighted", "weights": {"codesum/bleu4": 1}}})
