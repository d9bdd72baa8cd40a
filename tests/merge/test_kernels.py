"""Kernels against straightforward references written from the papers, plus identities."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mixmerge.merge import kernels as K
from mixmerge.merge.combine import merge_tensor
from mixmerge.merge.params import resolve_params


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---- straightforward references (sorts and loops, as the papers describe) ----

def ref_topk(delta, density):
    k = max(1, int(density * delta.numel()))
    idx = torch.argsort(delta.abs().reshape(-1), descending=True)[:k]
    mask = torch.zeros(delta.numel())
    mask[idx] = 1
    return delta * mask.reshape(delta.shape)


def ref_ties(base, finetuned, weights, density, lam=1.0):
    taus = [ref_topk(f - base, density) * w for f, w in zip(finetuned, weights, strict=True)]
    flat = [t.reshape(-1) for t in taus]
    out = torch.zeros(base.numel())
    for j in range(base.numel()):
        total = sum(float(t[j]) for t in flat)
        sign = 1.0 if total >= 0 else -1.0
        num, den = 0.0, 0.0
        for t, w in zip(flat, weights, strict=True):
            if float(t[j]) * sign > 0:
                num += float(t[j])
                den += w
        out[j] = num / den if den else 0.0
    return base + lam * out.reshape(base.shape)


def test_sparsify_magnitude_matches_sorted_topk():
    d = _rand(37, 11)
    for density in (0.05, 0.3, 0.5, 0.99):
        torch.testing.assert_close(K.sparsify_magnitude(d, density), ref_topk(d, density), rtol=0, atol=0)
        assert int((K.sparsify_magnitude(d, density) != 0).sum()) == max(1, int(density * d.numel()))


def test_ties_matches_paper_reference():
    base = _rand(6, 9, seed=1)
    fts = [base + 0.1 * _rand(6, 9, seed=s) for s in (2, 3, 4)]
    params = resolve_params({"method": "ties", "weights": [0.5, 0.3, 0.2], "density": 0.4}, 3)
    got, stats = merge_tensor("w", base, fts, params)
    torch.testing.assert_close(got, ref_ties(base, fts, [0.5, 0.3, 0.2], 0.4), rtol=1e-5, atol=1e-6)
    assert stats.kept_fraction == pytest.approx(int(0.4 * 54) / 54)
    assert 0 < stats.sign_conflict_rate < 1


def test_ties_hand_computed():
    base = torch.zeros(4)
    a = torch.tensor([1.0, -2.0, 3.0, 0.5])
    b = torch.tensor([-3.0, 1.0, 1.0, 0.1])
    params = resolve_params({"method": "ties", "weights": [1.0, 1.0], "density": 1.0}, 2)
    got, stats = merge_tensor("w", base, [a, b], params)
    # signs: sum = [-2, -1, 4, 0.6] -> [-, -, +, +]; disjoint mean of agreeing entries
    torch.testing.assert_close(got, torch.tensor([-3.0, -2.0, 2.0, 0.3]))
    assert stats.sign_conflict_rate == pytest.approx(0.5)


def test_ties_density1_one_model_is_task_arithmetic():
    base, ft = _rand(20, seed=1), _rand(20, seed=2)
    ties = resolve_params({"method": "ties", "weights": [0.7], "density": 1.0, "normalize": False}, 1)
    ta = resolve_params({"method": "task_arithmetic", "weights": [0.7]}, 1)
    torch.testing.assert_close(merge_tensor("w", base, [ft], ties)[0], merge_tensor("w", base, [ft], ta)[0])
    torch.testing.assert_close(merge_tensor("w", base, [ft], ta)[0], base + 0.7 * (ft - base))


def test_dare_density1_is_task_arithmetic():
    base = _rand(30, seed=1)
    fts = [_rand(30, seed=2), _rand(30, seed=3)]
    dare = resolve_params({"method": "dare_linear", "weights": [0.6, 0.4], "density": 1.0}, 2)
    ta = resolve_params({"method": "task_arithmetic", "weights": [0.6, 0.4]}, 2)
    torch.testing.assert_close(merge_tensor("w", base, fts, dare)[0], merge_tensor("w", base, fts, ta)[0])


def test_linear_one_zero_is_first_model():
    a, b = _rand(5, 5, seed=1), _rand(5, 5, seed=2)
    params = resolve_params({"method": "linear", "weight": 1.0}, 2)
    torch.testing.assert_close(merge_tensor("w", None, [a, b], params)[0], a)
    params = resolve_params({"method": "linear", "weights": [1.0, 3.0]}, 2)
    torch.testing.assert_close(merge_tensor("w", None, [a, b], params)[0], 0.25 * a + 0.75 * b)


def test_lambda_scales_the_merged_task_vector():
    base = _rand(40, seed=1)
    fts = [base + _rand(40, seed=2), base + _rand(40, seed=3)]
    for method in ("task_arithmetic", "ties", "dare_ties", "della", "breadcrumbs"):
        p1 = resolve_params({"method": method, "density": 0.6, "lambda": 1.0}, 2)
        p3 = resolve_params({"method": method, "density": 0.6, "lambda": 3.0}, 2)
        m1, m3 = merge_tensor("w", base, fts, p1)[0], merge_tensor("w", base, fts, p3)[0]
        torch.testing.assert_close(m3 - base, 3.0 * (m1 - base), rtol=1e-5, atol=1e-5)


def test_slerp_endpoints_and_midpoint():
    a, b = _rand(8, 8, seed=1), _rand(8, 8, seed=2)
    torch.testing.assert_close(K.slerp(0.0, a, b), a)
    torch.testing.assert_close(K.slerp(1.0, a, b), b, rtol=1e-5, atol=1e-5)
    # reference: angle between normalised tensors, interpolation of the raw ones
    ua, ub = a.reshape(-1) / a.norm(), b.reshape(-1) / b.norm()
    theta = math.acos(float(ua @ ub))
    ref = (math.sin(0.3 * theta) * a + math.sin(0.7 * theta) * b) / math.sin(theta)
    torch.testing.assert_close(K.slerp(0.7, a, b), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(K.slerp(0.25, a, 2 * a), 1.25 * a)  # collinear: linear fallback


def test_slerp_per_layer_schedule():
    params = resolve_params({"method": "slerp", "t": [{"filter": "self_attn", "value": [0.0, 1.0]},
                                                        {"value": 0.5}]}, 2)
    assert params.t.at("model.layers.0.self_attn.q_proj.weight", 3) == 0.0
    assert params.t.at("model.layers.1.self_attn.q_proj.weight", 3) == 0.5
    assert params.t.at("model.layers.2.self_attn.q_proj.weight", 3) == 1.0
    assert params.t.at("model.layers.2.mlp.up_proj.weight", 3) == 0.5


def test_dare_keeps_density_fraction_and_rescales():
    d = torch.ones(200_000)
    out = K.sparsify_random(d, 0.3, K.tensor_key(0, "x", 0), rescale="inverse_prob")
    kept = out != 0
    assert float(kept.float().mean()) == pytest.approx(0.3, abs=0.005)
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 1 / 0.3))
    out_l1 = K.sparsify_random(d, 0.3, K.tensor_key(0, "x", 0), rescale="l1")
    assert float(out_l1.abs().sum()) == pytest.approx(float(d.abs().sum()), rel=1e-4)
    assert torch.equal(out_l1 != 0, kept)  # the mask depends only on (seed, name, model)


def test_della_probabilities_follow_magnitude_rank():
    d = torch.tensor([[0.1, -5.0, 2.0, 0.0, -1.0]])
    probs = K.della_keep_probabilities(d, 0.5, 0.2)
    # ranks by |d|: 0.0 -> 0, 0.1 -> 1, -1 -> 2, 2 -> 3, -5 -> 4; p = 0.3 + rank/4 * 0.4
    torch.testing.assert_close(probs, torch.tensor([[0.4, 0.7, 0.6, 0.3, 0.5]]))
    big = _rand(64, 4096, seed=5)
    keep = K.sparsify_della(big, 0.5, 0.2, K.tensor_key(1, "w", 0), rescale=None) != 0
    assert float(keep.float().mean()) == pytest.approx(0.5, abs=0.01)
    top = big.abs() > big.abs().median(dim=1, keepdim=True).values
    assert float(keep[top].float().mean()) > float(keep[~top].float().mean()) + 0.15


def test_della_paper_rescale_is_unbiased():
    d = _rand(64, 256, seed=3)
    outs = torch.stack([K.sparsify_della(d, 0.4, 0.1, K.tensor_key(s, "w", 0), rescale="inverse_prob")
                        for s in range(40)])
    assert float((outs.mean(0) - d).abs().mean()) < 0.25 * float(d.abs().mean())


def test_breadcrumbs_drops_top_gamma_and_bottom():
    d = torch.arange(1, 101, dtype=torch.float32) * torch.tensor([1.0, -1.0]).repeat(50)
    out = K.sparsify_breadcrumbs(d, density=0.5, gamma=0.1)
    kept = sorted(int(abs(v)) for v in out[out != 0])
    assert kept == list(range(41, 91))  # 40 smallest and 10 largest dropped


def test_model_stock_matches_formula():
    base = _rand(100, seed=1)
    fts = [base + _rand(100, seed=2) + 0.5, base + _rand(100, seed=3) + 0.5]
    oa, ob = fts[0] - base, fts[1] - base
    cos = float(oa @ ob / (oa.norm() * ob.norm()))
    t = 2 * cos / (1 + cos)
    ref = t * (fts[0] + fts[1]) / 2 + (1 - t) * base
    torch.testing.assert_close(K.model_stock(base, fts), ref, rtol=1e-5, atol=1e-5)


def test_fisher_weighted_average():
    a, b = torch.tensor([1.0, 1.0]), torch.tensor([3.0, 3.0])
    fa, fb = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])
    out = K.fisher_weighted_average([a, b], [fa, fb], [1.0, 3.0], floor=0.0 + 1e-12)
    torch.testing.assert_close(out, torch.tensor([2.5, 2.5]))
    out = K.fisher_weighted_average([a, b], [torch.tensor([9.0, 1.0]), torch.tensor([1.0, 1.0])], [1, 1], 0)
    torch.testing.assert_close(out, torch.tensor([1.2, 2.0]))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 400), density=st.floats(0.01, 1.0), seed=st.integers(0, 10_000))
def test_magnitude_property_keeps_the_largest(n, density, seed):
    d = _rand(n, seed=seed)
    out = K.sparsify_magnitude(d, density)
    kept = out != 0
    k = n if density >= 1 else max(1, int(density * n))
    assert int(kept.sum()) == k
    if k < n:
        assert float(d[kept].abs().min()) >= float(d[~kept].abs().max())
    assert torch.equal(out[kept], d[kept])


@settings(max_examples=30, deadline=None)
@given(w=st.floats(0.0, 1.0), seed=st.integers(0, 1000))
def test_ties_property_between_inputs(w, seed):
    """With density 1 and normalize, each TIES entry is a convex mix of the agreeing inputs."""
    base = _rand(50, seed=seed)
    fts = [base + _rand(50, seed=seed + 1), base + _rand(50, seed=seed + 2)]
    params = resolve_params({"method": "ties", "weight": w, "density": 1.0}, 2)
    out = merge_tensor("w", base, fts, params)[0]
    lo = torch.minimum(torch.minimum(fts[0], fts[1]), base)
    hi = torch.maximum(torch.maximum(fts[0], fts[1]), base)
    assert torch.all(out >= lo - 1e-5) and torch.all(out <= hi + 1e-5)


@pytest.mark.parametrize("k_frac", [0.0, 0.001, 0.1, 0.5, 0.9, 0.999, 1.0])
def test_kth_largest_exact_on_large_tensors(k_frac):
    x = _rand(1_200_000, seed=11).abs()
    x[:1000] = 0.5  # ties
    k = min(x.numel(), max(1, int(k_frac * x.numel())))
    assert float(K.kth_largest(x, k)) == float(torch.sort(x, descending=True).values[k - 1])


def test_breadcrumbs_on_large_tensor_matches_sort():
    d = _rand(1_100_000, seed=12)
    out = K.sparsify_breadcrumbs(d, 0.6, 0.05)
    order = torch.argsort(d.abs())
    n = d.numel()
    n_bottom = n - int(0.6 * n) - int(0.05 * n)
    ref = torch.zeros_like(d)
    idx = order[n_bottom:n_bottom + int(0.6 * n)]
    ref[idx] = d[idx]
    assert torch.equal(out, ref)


def test_sign_consensus_mask_elects_weighted_sum_sign():
    weighted = torch.tensor([[1.0, -2.0, 0.0, 0.5], [-3.0, 1.0, 0.0, -0.5]])
    mask = K.sign_consensus_mask(weighted)
    assert mask.tolist() == [[False, True, False, True], [True, False, False, False]]


def test_chunked_combination_equals_whole(monkeypatch):
    deltas = torch.stack([_rand(3, 1000, seed=1), _rand(3, 1000, seed=2)])
    base = _rand(3, 1000, seed=3)
    whole = K.merge_task_vectors(deltas, [0.3, 0.7], consensus="sum", normalize=True, lam=1.3, base=base)
    monkeypatch.setattr(K, "_CHUNK", 7)
    chunked = K.merge_task_vectors(deltas, [0.3, 0.7], consensus="sum", normalize=True, lam=1.3, base=base)
    assert torch.equal(whole, chunked)


def test_magnitude_ties_keep_exactly_k_lowest_index_first():
    d = torch.tensor([0.5, -0.5, 2.0, 0.5, 0.1, -0.5])
    out = K.sparsify_magnitude(d, 0.5)  # k = 3: 2.0 plus the first two of the four 0.5s
    assert out.tolist() == [0.5, -0.5, 2.0, 0.0, 0.0, 0.0]
    zeros = torch.tensor([0.0, 0.0, 0.0, 1.0])
    assert K.sparsify_magnitude(zeros, 0.5).tolist() == [0.0, 0.0, 0.0, 1.0]


def test_breadcrumbs_keeps_exactly_int_density_n_at_ties():
    """Ties at both cuts (bfloat16-like repeated magnitudes): exactly int(density*n) entries survive, as
    mergekit's sorted slice; keeping every tie kept more (issue 15)."""
    d = torch.tensor([0.5, -0.5, 0.5, 0.25, -0.25, 0.25, 0.25, 1.0, -1.0, 1.0, 2.0, 0.125] * 10)
    n = d.numel()
    for density, gamma in ((0.5, 0.1), (0.3, 0.2), (0.75, 0.3), (0.2, 0.0)):
        out = K.sparsify_breadcrumbs(d, density, gamma)
        assert int(torch.count_nonzero(out)) == int(density * n), (density, gamma)
        ref = torch.zeros_like(d)
        order = torch.sort(d.abs(), stable=True).indices
        n_bottom = max(0, n - int(density * n) - int(gamma * n))
        idx = order[n_bottom:n_bottom + int(density * n)]
        ref[idx] = d[idx]
        assert torch.equal(out, ref)
