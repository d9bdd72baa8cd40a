import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mixmerge.merge.deltas import (
    NormAccumulator,
    PairAccumulator,
    cosine,
    delta_l2,
    pearson,
    sign_conflict_rate,
)


def test_delta_l2_matches_direct_norm():
    base = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    tuned = base + torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    assert delta_l2(base, tuned) == pytest.approx(5.0)
    assert delta_l2(base, base) == 0.0


def test_delta_l2_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        delta_l2(torch.zeros(3), torch.zeros(4))


def test_identical_task_vectors_have_r_one_and_no_conflicts():
    a = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    assert pearson(a, a) == pytest.approx(1.0)
    assert pearson(a, -a) == pytest.approx(-1.0)
    assert cosine(a, 3 * a) == pytest.approx(1.0)
    assert sign_conflict_rate(a, a) == 0.0
    assert sign_conflict_rate(a, -a) == 1.0


def test_independent_random_task_vectors_have_r_near_zero_and_half_conflicts(make_correlated):
    a, b = make_correlated((200, 500), rho=0.0, seed=1)
    assert abs(pearson(a, b)) < 0.01  # 1e5 samples: sd of r is ~0.003
    assert abs(cosine(a, b)) < 0.01
    assert sign_conflict_rate(a, b) == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("rho", [0.3, 0.7, 0.9])
def test_constructed_correlation_is_recovered(rho, make_correlated):
    a, b = make_correlated((100_000,), rho=rho, seed=2)
    assert pearson(a, b) == pytest.approx(rho, abs=0.01)
    assert pearson(a, b) == pytest.approx(float(np.corrcoef(a.numpy(), b.numpy())[0, 1]), abs=1e-12)


def test_pearson_is_centred_but_cosine_is_not():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    b = 100.0 - a  # perfectly anti-correlated around its mean, yet pointing the same way as a
    assert pearson(a, b) == pytest.approx(-1.0)
    assert cosine(a, b) == pytest.approx(float(a @ b / (a.norm() * b.norm())))
    assert cosine(a, b) > 0.5


def test_sign_conflict_counts_only_positions_where_both_moved():
    a = torch.tensor([1.0, -1.0, 0.0, 2.0, 0.0])
    b = torch.tensor([1.0, 1.0, 5.0, -3.0, 0.0])
    # both non-zero at 0, 1, 3; opposite signs at 1, 3
    assert sign_conflict_rate(a, b) == pytest.approx(2 / 3)
    assert math.isnan(sign_conflict_rate(torch.zeros(3), b[:3]))


def test_undefined_statistics_are_nan():
    assert math.isnan(pearson(torch.ones(5), torch.arange(5.0)))
    assert math.isnan(cosine(torch.zeros(5), torch.arange(5.0)))


def test_accumulator_over_chunks_equals_direct_computation(make_correlated):
    a, b = make_correlated((10_000,), rho=0.6, seed=3)
    a = a + 5.0  # a large mean: raw-sum formulas would lose digits here
    acc = PairAccumulator()
    norm = NormAccumulator()
    for chunk_a, chunk_b in zip(a.split(777), b.split(777), strict=True):
        acc.update(chunk_a, chunk_b)
        norm.update(chunk_a)
    assert acc.n == 10_000
    assert acc.pearson == pytest.approx(float(np.corrcoef(a.numpy(), b.numpy())[0, 1]), abs=1e-12)
    assert acc.cosine == pytest.approx(cosine(a, b), abs=1e-12)
    assert acc.sign_conflict_rate == pytest.approx(sign_conflict_rate(a, b))
    assert norm.l2 == pytest.approx(float(a.norm()), rel=1e-12)
    assert norm.rms == pytest.approx(float(a.norm()) / 100.0, rel=1e-12)


def test_merging_accumulators_is_order_independent(make_correlated):
    a, b = make_correlated((3000,), rho=0.4, seed=4)
    left, right, whole = PairAccumulator(), PairAccumulator(), PairAccumulator()
    left.update(a[:1000], b[:1000])
    right.update(a[1000:], b[1000:])
    whole.update(a, b)
    right.merge(left)
    assert right.pearson == pytest.approx(whole.pearson, abs=1e-12)
    assert right.c_xy == pytest.approx(whole.c_xy, rel=1e-10)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(-1e3, 1e3), st.floats(-1e3, 1e3)), min_size=3, max_size=60),
       st.integers(1, 7))
def test_streamed_pearson_matches_numpy(pairs, chunk):
    x = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    y = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
    acc = PairAccumulator()
    for cx, cy in zip(x.split(chunk), y.split(chunk), strict=True):
        acc.update(cx, cy)
    sx, sy = float(x.std()), float(y.std())
    if sx < 1e-6 or sy < 1e-6:
        return
    expected = float(np.corrcoef(x.numpy(), y.numpy())[0, 1])
    assert acc.pearson == pytest.approx(expected, abs=1e-9)
