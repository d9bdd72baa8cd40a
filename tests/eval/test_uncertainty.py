"""Bootstrap intervals and paired tests against direct reference computations and known truths."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mixmerge.eval.uncertainty import (
    Sample,
    aggregate_ci,
    bootstrap_ci,
    compare,
    compare_aggregate,
    exact_mcnemar_p,
    mean_of_scaled,
    randomisation_p,
)


def _scores(values, prefix="x"):
    return Sample.of_scores({f"{prefix}{i}": float(v) for i, v in enumerate(values)})


def _reference_ci(num, den, n_resamples, seed):
    """The bootstrap written out with loops: same draws, every replicate summed by hand."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(num), size=(n_resamples, len(num)))
    reps = []
    for row in idx:
        top = bottom = 0.0
        for i in row:
            top += num[i]
            bottom += den[i]
        reps.append(top / bottom)
    return tuple(np.percentile(reps, [2.5, 97.5]))


def test_interval_equals_a_direct_reference_for_means_and_ratios():
    rng = np.random.default_rng(1)
    scores = rng.random(37)
    assert bootstrap_ci(_scores(scores), n_resamples=500, seed=3) == pytest.approx(
        _reference_ci(scores, np.ones(37), 500, 3), abs=1e-12)
    nll, tokens = rng.random(23) * 40, rng.integers(1, 30, 23).astype(float)
    loss = Sample.of_ratios({f"e{i}": (nll[i], tokens[i]) for i in range(23)})
    assert loss.value == pytest.approx(nll.sum() / tokens.sum())
    assert bootstrap_ci(loss, n_resamples=500, seed=4) == pytest.approx(_reference_ci(nll, tokens, 500, 4), abs=1e-12)


def test_interval_is_seeded_and_covers_the_truth_about_95_percent_of_the_time():
    sample = _scores(np.random.default_rng(0).random(50) < 0.3)
    assert bootstrap_ci(sample, seed=7) == bootstrap_ci(sample, seed=7)
    rng = np.random.default_rng(11)
    covered = 0
    for _ in range(200):
        lo, hi = bootstrap_ci(_scores(rng.random(200) < 0.3), n_resamples=1000, seed=int(rng.integers(1 << 30)))
        covered += lo <= 0.3 <= hi
    assert 0.88 <= covered / 200 <= 0.99


def test_aggregate_interval_resamples_every_task_in_each_replicate():
    rng = np.random.default_rng(2)
    gen, summ = rng.random(15) < 0.4, rng.random(21) * 60
    samples = {"codegen/pass@1": _scores(gen, "g"), "codesum/bleu4": _scores(summ, "s")}
    combine = mean_of_scaled({"codegen/pass@1": 1.0, "codesum/bleu4": 0.01})
    got = aggregate_ci(samples, combine, n_resamples=400, seed=5)
    draw = np.random.default_rng(5)  # metrics are drawn in sorted order: codegen before codesum
    idx_gen = draw.integers(0, 15, size=(400, 15))
    idx_sum = draw.integers(0, 21, size=(400, 21))
    reps = [(gen[a].mean() * 1.0 + summ[b].mean() * 0.01) / 2 for a, b in zip(idx_gen, idx_sum, strict=True)]
    assert got == pytest.approx(tuple(np.percentile(reps, [2.5, 97.5])), abs=1e-12)
    point = (gen.mean() + summ.mean() * 0.01) / 2
    assert got[0] < point < got[1]


def test_exact_mcnemar_matches_the_binomial_by_hand():
    a = np.array([1] * 7 + [0] * 1 + [1] * 5 + [0] * 3)
    b = np.array([0] * 7 + [1] * 1 + [1] * 5 + [0] * 3)
    assert exact_mcnemar_p(a, b) == pytest.approx(2 * (math.comb(8, 0) + math.comb(8, 1)) / 2 ** 8)
    assert exact_mcnemar_p(a, a) == 1.0
    assert exact_mcnemar_p([1, 0], [0, 1]) == 1.0  # 1 vs 1 discordant: as balanced as it gets


def test_a_simulated_difference_is_detected_and_an_identical_pair_is_not_separable():
    rng = np.random.default_rng(3)
    better, worse = _scores(rng.random(120) < 0.7), _scores(rng.random(120) < 0.3)
    found = compare(better, worse, seed=1)
    assert found.separable and found.ci95[0] > 0 and found.p_value < 1e-4
    assert found.test == "exact McNemar" and found.n == 120
    same = compare(better, better, seed=1)
    assert same.difference == 0.0 and same.ci95 == (0.0, 0.0) and same.p_value == 1.0 and not same.separable
    # continuous metrics take the randomisation test; a small real shift on 300 examples is found
    base = rng.random(300) * 50
    shifted = compare(_scores(base + 5 + rng.normal(0, 3, 300)), _scores(base), seed=2)
    assert shifted.test == "paired randomisation" and shifted.separable and shifted.p_value < 0.001


def test_p_values_are_roughly_uniform_under_the_null():
    rng = np.random.default_rng(4)
    ps = []
    for _ in range(60):
        a, b = rng.random(40) * 10, rng.random(40) * 10
        ps.append(randomisation_p({"m": (_scores(a), _scores(b))}, n_permutations=400, seed=int(rng.integers(99))))
    ps = np.asarray(ps)
    assert np.all((ps > 0) & (ps <= 1))
    assert 0.0 <= np.mean(ps < 0.05) <= 0.15 and 0.3 <= np.median(ps) <= 0.7


def test_pairing_follows_example_ids_not_order():
    rng = np.random.default_rng(5)
    a_vals, b_vals = rng.random(30), rng.random(30)
    a = _scores(a_vals)
    ids = list(a.ids)
    shuffled = rng.permutation(30)
    b_shuffled = Sample.of_scores({ids[i]: float(b_vals[i]) for i in shuffled})
    assert compare(a, b_shuffled, seed=3) == compare(a, _scores(b_vals), seed=3)
    with pytest.raises(ValueError, match="same examples"):
        compare(a, _scores(b_vals, prefix="y"))


def test_aggregate_comparison_detects_a_gain_on_one_task_only():
    rng = np.random.default_rng(6)
    loss_a = {f"l{i}": (float(x), 10.0) for i, x in enumerate(rng.random(80) * 20 + 10)}
    bleu = rng.random(80) * 40
    a = {"codesum/bleu4": _scores(bleu + 8, "s"), "codegen/loss": Sample.of_ratios(loss_a)}
    b = {"codesum/bleu4": _scores(bleu, "s"), "codegen/loss": Sample.of_ratios(loss_a)}
    combine = mean_of_scaled({"codesum/bleu4": 0.01, "codegen/loss": -1.0})
    result = compare_aggregate(a, b, combine, seed=0)
    assert result.difference == pytest.approx(0.04)
    assert result.separable and result.p_value < 0.001
    tie = compare_aggregate(a, a, combine, seed=0)
    assert not tie.separable and tie.p_value == 1.0


def test_bad_samples_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="at least one example"):
        Sample.of_scores({})
    with pytest.raises(ValueError, match="positive"):
        Sample.of_ratios({"a": (1.0, 0.0)})
