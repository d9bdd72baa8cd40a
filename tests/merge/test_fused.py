"""The fused numba kernels (fused/, fast_gta.py) against the torch reference (kernels.py, combine.py):
bit for bit where no float64 sum is involved, exact selection against a sort, the counter RNG against
its torch twin, thread-count determinism, non-finite inputs, and the in-memory merger's plan cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import numba
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from mixmerge.merge import InMemoryMerger, fast_gta, merge_folders
from mixmerge.merge import fused as F
from mixmerge.merge import kernels as K
from mixmerge.merge.combine import merge_tensor
from mixmerge.merge.io import SafetensorsFolder
from mixmerge.merge.params import resolve_params
from mixmerge.merge.registry import METHODS

GTA_METHODS = ["task_arithmetic", "ties", "dare_ties", "dare_linear", "della", "della_linear", "breadcrumbs",
               "breadcrumbs_ties"]
SPARSIFYING = [m for m in GTA_METHODS if m != "task_arithmetic"]


def _tied(shape, n_models: int, seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A base and specialists whose deltas are multiples of 1/64 (many exact ties, some zeros); the
    specialists are exact in float32, so ``model - base`` gives the deltas back exactly."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.round(torch.randn(shape, generator=gen) * 64) / 64
    models = [base + torch.round(torch.randn(shape, generator=gen) * 16) / 64 for _ in range(n_models)]
    return base, models


def _fused(name: str, base: torch.Tensor, models, params, *, is_delta: bool = False):
    """One tensor through the fused path, as the engine runs it: flat float32 numpy inputs, plan then merge."""
    flat_base = base.reshape(-1).contiguous().numpy()
    xs = [(m - base if is_delta else m).reshape(-1).contiguous().numpy() for m in models]
    plan = fast_gta.plan_sparsity(name, flat_base, xs, params, is_delta=is_delta, shape=tuple(base.shape))
    merged, stats, bad_in, bad_out = fast_gta.merge_planned(flat_base, xs, plan, params, is_delta=is_delta)
    assert (bad_in, bad_out) == (0, 0)
    return torch.from_numpy(merged).view(base.shape), stats, plan


def _assert_matches_reference(name, base, models, params):
    ref, ref_stats = merge_tensor(name, base, models, params)
    got, stats, _ = _fused(name, base, models, params)
    if params.rescale != "l1" and len(models) <= 2:  # no float64 sum and no 3-way float32 sum involved
        assert torch.equal(got, ref), f"max |diff| {float((got - ref).abs().max())}"
    else:
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-7)
    assert stats.kept_fraction == pytest.approx(ref_stats.kept_fraction, abs=1e-12)
    assert stats.sign_conflict_rate == pytest.approx(ref_stats.sign_conflict_rate, abs=1e-12)
    return got, stats


def _with_numba_threads(n: int, fn):
    before = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        return fn()
    finally:
        numba.set_num_threads(before)


def _two_threads() -> int:
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has a single thread here")
    return 2


# ---------------------------------------------------------------- fused == reference

def test_every_gta_method_is_covered():
    assert sorted(GTA_METHODS) == sorted(n for n, m in METHODS.items() if m.kind == "gta")


# One row per variant: shape, rescale, normalize, lambda, weights (the first n_models are used).
# DELLA's (density, epsilon) pairs include (0.6, 0.15) and (0.3, 0.1), where float32(d) - float32(e) differs
# from float32(d - e) (see test_della_keep_probabilities_round_like_the_reference).
VARIANTS = {
    "1d-plain": ((7,), None, True, 1.0, [0.6, 0.4, 0.3]),
    "2d-l1-zero-weight": ((33, 17), "l1", False, 0.9, [1.1, 0.0, 0.5]),
    "2d-invprob-negative-weight": ((64, 130), "inverse_prob", True, 1.3, [1.2, -0.4, 0.6]),
    "3d-invprob-negative-lambda": ((3, 5, 7), "inverse_prob", False, -0.5, [-0.5, 0.8, 0.0]),
    "1-row-l1-normalized": ((1, 300), "l1", True, 1.0, [0.3, 0.3, 0.3]),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("n_models", [1, 2, 3])
@pytest.mark.parametrize("method", GTA_METHODS)
def test_fused_equals_reference(method, n_models, variant):
    shape, rescale, normalize, lam, weights = VARIANTS[variant]
    cfg = {"method": method, "weights": weights[:n_models], "density": [0.6, 0.3, 0.5][:n_models],
           "epsilon": [0.15, 0.1, 0.1][:n_models], "gamma": 0.05, "lambda": lam, "normalize": normalize,
           "rescale": rescale is not None, "rescale_mode": rescale or "l1", "seed": 11}
    params = resolve_params(cfg, n_models)
    seed = GTA_METHODS.index(method) * 100 + n_models * 10 + list(VARIANTS).index(variant)
    base, models = _tied(shape, n_models, seed)
    _assert_matches_reference("model.layers.0.mlp.up_proj.weight", base, models, params)


@pytest.mark.parametrize("rescale", [None, "l1", "inverse_prob"])
@pytest.mark.parametrize("method", SPARSIFYING)
def test_fused_equals_reference_at_edge_densities(method, rescale):
    """Density 0.1 of 7 entries (breadcrumbs keeps nothing, TIES keeps one) next to density 1 (no
    sparsifier); and a specialist equal to the base (all-zero delta: the L1 rescale is skipped)."""
    base, (m0, _) = _tied((7,), 2, seed=3)
    extra = {"weights": [0.7, 0.5], "epsilon": 0.05, "gamma": 0.1, "seed": 2, "rescale": rescale is not None,
             "rescale_mode": rescale or "l1"}
    params = resolve_params({"method": method, "density": [0.1, 1.0], **extra}, 2)
    m1 = m0 * 0.5 + base * 0.5
    _, stats = _assert_matches_reference("w", base, [m0, m1], params)
    nonzero_1 = int(torch.count_nonzero(m1 - base))
    if method.startswith("breadcrumbs"):  # int(0.1 * 7) == 0 entries of model 0
        assert stats.kept_fraction == pytest.approx(nonzero_1 / 14)
    if method == "ties":  # max(1, int(0.1 * 7)) == 1 entry of model 0
        assert stats.kept_fraction == pytest.approx((1 + nonzero_1) / 14)
    params = resolve_params({"method": method, "density": [0.6, 0.6], **extra}, 2)
    _assert_matches_reference("w", base, [m0, base.clone()], params)


def test_della_keep_probabilities_round_like_the_reference():
    """density 0.6, epsilon 0.15 (DELLA's default epsilon): float32(0.6) - float32(0.15) is one ulp above
    float32(0.6 - 0.15); the kernel must round the double difference, as the reference does, or every
    1/p-rescaled survivor can be one ulp off."""
    d = torch.randn(4, 64, generator=torch.Generator().manual_seed(1))
    key = K.tensor_key(0, "w", 0)
    ref = K.sparsify_della(d, 0.6, 0.15, key, rescale="inverse_prob")
    out = np.empty(d.numel(), np.float32)
    F.della_sparsify((d.reshape(-1).numpy(),), np.zeros(d.numel(), np.float32), 0, True, 4, 0.6, 0.15, key,
                     True, out)
    differ = torch.from_numpy(out).view(4, 64) != ref
    assert not differ.any(), f"{int(differ.sum())} of {ref.numel()} survivors differ"


@pytest.mark.parametrize("method", GTA_METHODS)
def test_task_vectors_give_the_same_merge_as_full_weights(method):
    base, models = _tied((33, 17), 2, seed=21)
    models[1][0, :5] = base[0, :5]  # a few zero deltas
    params = resolve_params({"method": method, "weights": [0.7, 0.6], "density": [0.5, 0.3], "epsilon": 0.1,
                             "gamma": 0.05, "lambda": 1.1, "seed": 4}, 2)
    full, full_stats, full_plan = _fused("t", base, models, params, is_delta=False)
    delta, delta_stats, delta_plan = _fused("t", base, models, params, is_delta=True)
    assert torch.equal(full, delta)
    assert full_stats == delta_stats
    for field in ("rule", "thr", "cutoff", "lo", "density", "key", "scale"):
        assert np.array_equal(getattr(full_plan, field), getattr(delta_plan, field)), field
    if full_plan.survivors is not None:
        assert np.array_equal(full_plan.survivors, delta_plan.survivors)


# ---------------------------------------------------------------- exact selection

_POOL = np.array([0.0, -0.0, 0.25, -0.25, 1.0, 1e-40, -3e-39, 2.0**-20, 65504.0, -7.5], np.float32)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 3000), seed=st.integers(0, 2**32 - 1), mix=st.sampled_from(["pool", "normal", "both"]),
       which_k=st.sampled_from(["first", "last", "any"]), k_frac=st.floats(0, 1), i=st.integers(0, 2),
       is_delta=st.booleans())
def test_kth_largest_bits_and_top_k_rule_match_a_sort(n, seed, mix, which_k, k_frac, i, is_delta):
    rng = np.random.default_rng(seed)
    xs = []
    for _ in range(3):
        x = rng.standard_normal(n).astype(np.float32)
        pooled = _POOL[rng.integers(0, len(_POOL), n)]
        if mix == "pool":
            x = pooled
        elif mix == "both":
            x = np.where(rng.random(n) < 0.5, pooled, x).astype(np.float32)
        xs.append(np.ascontiguousarray(x))
    base = (np.round(rng.standard_normal(n) * 4) / 4).astype(np.float32)
    k = {"first": 1, "last": n, "any": min(n, 1 + int(k_frac * n))}[which_k]

    delta = torch.from_numpy(xs[i]) if is_delta else torch.from_numpy(xs[i]) - torch.from_numpy(base)
    mag = delta.abs()
    kth = torch.sort(mag, descending=True).values[k - 1]
    bits, n_above, n_tied = F.kth_largest_bits(tuple(xs), base, i, is_delta, k)
    assert bits == int(kth.view(torch.int32))
    assert F.bits_to_float(bits) == float(kth)
    assert n_above == int((mag > kth).sum())
    assert n_tied == int((mag == kth).sum())

    thr, cutoff = F.top_k_rule(tuple(xs), base, i, is_delta, k)
    mag_bits = mag.view(torch.int32)
    keep = (mag_bits > thr) | ((mag_bits == thr) & (torch.arange(n) < cutoff))
    expected = torch.zeros(n, dtype=torch.bool)
    expected[torch.argsort(mag, descending=True, stable=True)[:k]] = True  # ties: lowest index first
    assert int(keep.sum()) == k
    assert torch.equal(keep, expected)


def test_top_k_rule_hand_computed_ties():
    d = np.array([0.5, -0.5, 2.0, 0.5, 0.1, -0.5, 0.0, 0.0], np.float32)
    zero = np.zeros_like(d)
    thr, cutoff = F.top_k_rule((d,), zero, 0, True, 3)  # 2.0, then the first two of the four 0.5s
    assert F.bits_to_float(thr) == 0.5 and cutoff == 2
    thr, cutoff = F.top_k_rule((d,), zero, 0, True, 5)  # all four 0.5s: no tie to break
    assert F.bits_to_float(thr) == 0.5 and cutoff == len(d)
    thr, cutoff = F.top_k_rule((d,), zero, 0, True, 7)  # 2.0, four 0.5s, 0.1 and the first zero
    assert thr == 0 and cutoff == 7
    assert F.kth_largest_bits((d,), zero, 0, True, 8) == (0, 6, 2)


def test_kth_largest_bits_with_several_histogram_parts():
    """300k entries on 2 threads: the radix histograms are split in parts (the counts must add up)."""
    gen = torch.Generator().manual_seed(5)
    x = torch.round(torch.randn(300_000, generator=gen) * 256) / 256
    x[::7] = torch.randn(len(x[::7]), generator=gen)
    xs, base = (x.numpy(),), np.zeros(x.numel(), np.float32)
    mag = x.abs()
    ordered = torch.sort(mag, descending=True).values
    threads = _two_threads()
    assert min(threads, x.numel() // F.BLOCK) == 2  # the number of histogram parts
    for k in (1, 1000, 150_000, 299_999, 300_000):
        bits, n_above, n_tied = _with_numba_threads(threads, lambda k=k: F.kth_largest_bits(xs, base, 0, True, k))
        assert F.bits_to_float(bits) == float(ordered[k - 1])
        assert (n_above, n_tied) == (int((mag > ordered[k - 1]).sum()), int((mag == ordered[k - 1]).sum()))


# ---------------------------------------------------------------- counter RNG


@numba.njit
def _numba_draws(key, n):
    out = np.empty(n, np.float32)
    for j in range(n):
        out[j] = F._uniform(key, j)
    return out


@pytest.mark.parametrize("key", [0, 1, 2**63, 2**64 - 1, K.tensor_key(0, "model.layers.0.mlp.up_proj.weight", 1)])
def test_counter_uniform_equals_numba_uniform(key):
    n = 60_000
    ref = K.counter_uniform(key, (n,))
    got = torch.from_numpy(_numba_draws(np.uint64(key), n))
    assert torch.equal(got, ref)
    assert torch.equal(K.counter_uniform(key, (300, 200)), ref.view(300, 200))
    assert float(ref.min()) >= 0.0 and float(ref.max()) < 1.0
    assert float(ref.mean()) == pytest.approx(0.5, abs=0.01)
    assert torch.equal(ref * 2**24, torch.floor(ref * 2**24))  # 24 random bits
    assert torch.unique(ref).numel() > 0.99 * n


def test_dare_mask_of_fused_path_is_the_reference_mask():
    base, ones = torch.zeros(5000), torch.ones(5000)
    params = resolve_params({"method": "dare_linear", "weights": [1.0], "density": 0.3, "rescale": False,
                             "seed": 9}, 1)
    got, stats, _ = _fused("model.norm.weight", base, [ones], params)
    mask = K.counter_uniform(K.tensor_key(9, "model.norm.weight", 0), (5000,)) < 0.3
    assert torch.equal(got, mask.float())
    assert stats.kept_fraction == pytest.approx(int(mask.sum()) / 5000, abs=1e-12)
    assert stats.kept_fraction == pytest.approx(0.3, abs=0.03)


# ---------------------------------------------------------------- thread counts


def _several_blocks(seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """300k entries (about 4.6 blocks of fused.BLOCK): half exact ties (multiples of 1/64), half
    continuous values (their float64 L1 sums depend on the summation order)."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(600, 500, generator=gen)
    models = []
    for _ in range(2):
        delta = torch.round(torch.randn(600, 500, generator=gen) * 16) / 64
        delta.view(-1)[1::2] = 0.3 * torch.randn(150_000, generator=gen)
        models.append(base + delta)
    return base, models


@pytest.mark.parametrize("cfg", [
    {"method": "ties", "density": 0.5},
    {"method": "dare_ties", "density": 0.5, "rescale": True, "rescale_mode": "l1"},
    {"method": "della", "density": 0.5, "epsilon": 0.1, "rescale": True, "rescale_mode": "l1"},
], ids=lambda c: c["method"])
def test_fused_bit_identical_on_one_and_two_threads(cfg):
    assert 4 * F.BLOCK < 600 * 500
    base, models = _several_blocks(seed=8)
    params = resolve_params({**cfg, "weights": [0.6, 0.5], "lambda": 1.2, "seed": 1}, 2)
    one = _with_numba_threads(1, lambda: _fused("w", base, models, params))
    two = _with_numba_threads(_two_threads(), lambda: _fused("w", base, models, params))
    assert torch.equal(one[0], two[0])
    assert one[1] == two[1]
    if cfg["method"] == "ties":  # the selection's threshold falls inside a run of ties spanning blocks
        plan = two[2]
        assert all(0 < c < base.numel() for c in plan.cutoff)
    ref, ref_stats = merge_tensor("w", base, models, params)
    torch.testing.assert_close(two[0], ref, rtol=1e-6, atol=1e-7)
    assert two[1].kept_fraction == pytest.approx(ref_stats.kept_fraction, abs=1e-12)
    assert two[1].sign_conflict_rate == pytest.approx(ref_stats.sign_conflict_rate, abs=1e-12)


# ---------------------------------------------------------------- non-finite inputs
# test_validation.py::test_nan_or_inf_input covers NaN/Inf in a specialist for ties (where the top-k keeps
# the NaN); here: an entry the random masks drop, so only the input check can see it, and a bad base.


def _poisoned_copy(src: Path, dst: Path, name: str, index: tuple[int, int]) -> Path:
    shutil.copytree(src, dst)
    path = dst / "model.safetensors"
    state = load_file(str(path))
    state[name][index] = float("nan")
    save_file(state, str(path), metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize(("method", "where"), [("dare_ties", "model"), ("della", "model"), ("ties", "base"),
                                               ("dare_ties", "base")])
def test_nan_input_names_tensor_and_model_even_when_dropped(method, where, tiny_base, specialists, tmp_path):
    name, seed = "model.layers.1.self_attn.o_proj.weight", 4
    folder = SafetensorsFolder(tiny_base)
    shape = folder.shape(name)
    folder.close()
    draws = K.counter_uniform(K.tensor_key(seed, name, 1), shape)
    index = tuple(int(v) for v in torch.nonzero(draws >= 0.95)[0])  # dropped: keep probability <= 0.6
    cfg = {"method": method, "density": 0.5, "epsilon": 0.1, "seed": seed}
    if where == "model":
        bad = _poisoned_copy(specialists[1], tmp_path / "bad", name, index)
        base, models, label = tiny_base, [specialists[0], bad], r"model 1 \(.*bad\)"
    else:
        base = _poisoned_copy(tiny_base, tmp_path / "bad", name, index)
        models, label = specialists, r"merge\.base"
    with pytest.raises(ValueError, match=rf"NaN/Inf in input: tensor '{name}' of {label}"):
        merge_folders(cfg, base, models, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]  # nothing half-written is left


# ---------------------------------------------------------------- in-memory merges


def _state(folder: Path) -> dict[str, torch.Tensor]:
    src = SafetensorsFolder(folder)
    out = {n: src.get(n).clone() for n in src.names()}
    src.close()
    return out


@pytest.fixture(scope="module")
def mergers(tiny_base, specialists):
    """A merger with the plan cache and one without (a fresh plan for every trial)."""
    return InMemoryMerger(tiny_base, specialists), InMemoryMerger(tiny_base, specialists, cache_sparse=False)


@pytest.mark.parametrize("method", ["ties", "dare_ties", "della"])
def test_in_memory_equals_streamed_and_reweighting_reuses_the_plan(method, mergers, tiny_base, specialists,
                                                                   tmp_path, monkeypatch):
    from mixmerge.models import load_model

    cached, fresh = mergers
    cfg = {"method": method, "density": 0.6, "epsilon": 0.1, "weight": 0.3, "lambda": 1.2, "seed": 5,
           "report_stats": True}
    report = merge_folders(cfg, tiny_base, specialists, tmp_path / "m")
    streamed = _state(tmp_path / "m")
    model = load_model(tiny_base)
    live_report = cached.merge_into(model, cfg)
    live = {n: t.detach().clone() for n, t in model.state_dict().items()}
    for name, t in streamed.items():
        assert torch.equal(live[name], t), name
    assert set(live_report["per_tensor"]) == set(report["per_tensor"])
    for name, s in report["per_tensor"].items():
        for key in ("kept_fraction", "sign_conflict_rate"):
            assert live_report["per_tensor"][name][key] == pytest.approx(s[key], abs=5e-7)

    planned = []
    real_plan = fast_gta.plan_sparsity
    monkeypatch.setattr(fast_gta, "plan_sparsity",
                        lambda name, *a, **kw: planned.append(name) or real_plan(name, *a, **kw))
    reweighted = {**cfg, "weight": 0.8}
    cached.merge_into(model, reweighted)
    assert planned == []  # every plan came from the cache
    reference = load_model(tiny_base)
    fresh.merge_into(reference, reweighted)
    assert len(planned) == len(live_report["per_tensor"])
    got, want = model.state_dict(), reference.state_dict()
    assert all(torch.equal(got[n], want[n]) for n in streamed)
    assert not all(torch.equal(got[n], live[n]) for n in streamed)  # the weight did change the merge


def test_della_rank_order_when_many_keys_share_their_top_24_bits():
    """Rows whose |delta| values agree in their top 24 bits and descend in the lowest byte: the
    insertion pass would move O(m^2) entries, so the kernel must switch to the full radix sort; the
    ranks (hence the survivors) must still equal the reference's stable sort."""
    cols = 300
    low_byte = torch.tensor([(255 - c) % 256 for c in range(cols)], dtype=torch.int32)
    bits = (0x3C000000 + low_byte).repeat(6, 1)  # 6 rows, one top-24-bit group per 256 columns
    bits[1::2] = 0x3C000000 + torch.arange(cols, dtype=torch.int32) % 7  # ties and few moves
    delta = bits.view(torch.float32) * torch.tensor([1.0, -1.0]).repeat(cols // 2)
    base = torch.zeros_like(delta)
    params = resolve_params({"method": "della", "weights": [1.0], "density": 0.5, "epsilon": 0.4,
                             "rescale": True, "rescale_mode": "inverse_prob", "seed": 9}, 1)
    got, _ = _assert_matches_reference("rows", base, [base + delta], params)
    assert int(torch.count_nonzero(got)) > 0


@pytest.mark.parametrize("rescale_mode", ["l1", "inverse_prob"])
def test_in_memory_della_new_density_reuses_ranks(rescale_mode, tiny_base, specialists):
    """The second DELLA trial (another density, epsilon and seed) reads the within-row ranks stored by
    the first instead of ranking again, and gives exactly what a fresh merger computes for it."""
    from mixmerge.models import load_model

    tiny_model = load_model(tiny_base)
    cfg = {"method": "della", "density": 0.5, "epsilon": 0.1, "weight": 0.4, "seed": 1, "rescale_mode": rescale_mode}
    second = {**cfg, "density": 0.3, "epsilon": 0.2, "seed": 2}
    merger = InMemoryMerger(tiny_base, specialists)
    merger.merge_into(tiny_model, cfg)
    assert merger._ranks and all(r is not None and r.dtype == np.int16
                                 for ranks in merger._ranks.values() for r in ranks)
    merger.merge_into(tiny_model, second)
    reused = {k: v.detach().clone() for k, v in tiny_model.state_dict().items()}
    InMemoryMerger(tiny_base, specialists, cache_sparse=False).merge_into(tiny_model, second)
    for name, value in tiny_model.state_dict().items():
        assert torch.equal(value, reused[name]), name


def _della_rows(kind: str, rows: int, cols: int) -> np.ndarray:
    """Task-vector rows of a given character: smooth (low-rank Gaussian), tied (multiples of 1/64), mostly
    zero, bf16 fine-tune-like (0 or one ulp of the weight), or all in one narrow band of distinct values
    (every entry in one bucket: the bucket path gives up and the row is ranked fully)."""
    rng = np.random.default_rng(cols + rows)
    smooth = (rng.standard_normal((rows, 8)) @ rng.standard_normal((8, cols))).astype(np.float32) * 0.01
    if kind == "smooth":
        return smooth
    if kind == "tied":
        return (np.round(rng.standard_normal((rows, cols)) * 4) / 64).astype(np.float32)
    if kind == "mostly_zero":
        return smooth * (rng.random((rows, cols)) < 0.4)
    if kind == "bf16_finetune":
        w = rng.standard_normal((rows, cols)).astype(np.float32) * 0.02
        bf16 = lambda a: (a.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)  # noqa: E731
        return bf16(bf16(w) + bf16(w * 0.01)) - bf16(w)
    if kind == "one_band":
        return (1 + rng.random((rows, cols)) * 2**-6).astype(np.float32) * rng.choice([-1, 1], (rows, cols))
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["smooth", "tied", "mostly_zero", "bf16_finetune", "one_band"])
@pytest.mark.parametrize(("rows", "cols"), [(40, 576), (12, 1536), (3, 11008), (9, 33)])
def test_della_rank_bands_decide_like_the_full_ranking(kind, rows, cols):
    """Without the 1/p rescale DELLA decides keep/drop from rank bands (``_keep_by_bucket``); the survivors
    must equal those of the full stable ranking (the SORT_AND_STORE mode ranks every row, and stores the
    ranks that USE_STORED reads), for smooth,
    tied, zero-heavy and one-band rows, short and long (finer buckets beyond 1024 columns)."""
    d = _della_rows(kind, rows, cols).reshape(-1)
    n = d.size
    xs, base = (d,), np.zeros(n, np.float32)
    by_bands, ranked = np.empty(n, np.float32), np.empty(n, np.float32)
    key = K.tensor_key(3, "w", 0)
    sums_bands = F.della_sparsify(xs, base, 0, True, rows, 0.5, 0.15, key, False, by_bands)
    ranks = np.empty(n, F.rank_dtype(cols))
    sums_ranked = F.della_sparsify(xs, base, 0, True, rows, 0.5, 0.15, key, False, ranked, ranks, F.SORT_AND_STORE)
    assert np.array_equal(by_bands.view(np.int32), ranked.view(np.int32))
    assert sums_bands == sums_ranked
    # the stored ranks are each row's stable ranking, and reading them decides the same
    want = np.argsort(np.argsort(np.abs(d).reshape(rows, cols), axis=1, kind="stable"), axis=1, kind="stable")
    assert np.array_equal(ranks.reshape(rows, cols), want)
    from_ranks = np.empty(n, np.float32)
    assert F.della_sparsify(xs, base, 0, True, rows, 0.5, 0.15, key, False, from_ranks, ranks,
                            F.USE_STORED) == sums_ranked
    assert np.array_equal(from_ranks.view(np.int32), ranked.view(np.int32))
    kept = np.count_nonzero(ranked) / max(np.count_nonzero(d), 1)
    assert 0.4 < kept < 0.6  # about the density: the draws did decide


@pytest.mark.parametrize("shape", [(40, 30), (300, 300)])  # the small (sort) and the radix selection paths
def test_fused_breadcrumbs_keeps_exactly_int_density_n_at_ties(shape):
    """Deltas with many exact ties (multiples of 1/64) at both cuts: the fused path keeps exactly
    int(density * n) entries per model, as mergekit (issue 15), and equals the reference."""
    base, models = _tied(shape, 2, seed=5)
    n = base.numel()
    params = resolve_params({"method": "breadcrumbs", "weights": [1.0, 1.0], "density": [0.5, 0.3],
                             "gamma": 0.1}, 2)
    flat_base = base.reshape(-1).numpy()
    xs = [m.reshape(-1).numpy() for m in models]
    plan = fast_gta.plan_sparsity("w", flat_base, xs, params, is_delta=False, shape=shape)
    for i, density in enumerate((0.5, 0.3)):
        solo = resolve_params({"method": "breadcrumbs", "weights": [1.0], "density": density, "gamma": 0.1}, 1)
        one = fast_gta.plan_sparsity("w", flat_base, [xs[i]], solo, is_delta=False, shape=shape)
        merged, stats, _, _ = fast_gta.merge_planned(flat_base, [xs[i]], one, solo, is_delta=False)
        assert round(stats.kept_fraction * n) == int(density * n)
        assert torch.equal(torch.from_numpy(merged).view(shape), merge_tensor("w", base, [models[i]], solo)[0])
    assert plan.cutoff.min() >= 0
    _assert_matches_reference("w", base, models, params)
