"""merge.dtype is the compute dtype (mergekit's meaning): the inputs are cast to it and every step of the
merge rounds in it; merge.out_dtype only casts the result. Null computes in float32."""

from __future__ import annotations

import pytest
import torch

from mixmerge.merge import kernels as K
from mixmerge.merge.combine import merge_tensor
from mixmerge.merge.engine import merge_folders
from mixmerge.merge.io import SafetensorsFolder
from mixmerge.merge.params import resolve_params

BF16 = torch.bfloat16


def _inputs(n=4096, seed=0):
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(64, n // 64, generator=gen).to(BF16)
    models = [(base.float() + 0.02 * torch.randn(base.shape, generator=gen)).to(BF16) for _ in range(3)]
    return base, models


def _mergekit_gta_bf16(base, models, weights, densities, consensus):
    """mergekit 0.1.5's generalized task arithmetic, step by step in bfloat16 (written from its
    merge_group: deltas, magnitude mask by a descending sort, weights in the deltas' dtype, sign election
    on the summed weighted deltas, divisor from the rounded weights)."""
    deltas = torch.stack([m - base for m in models])
    for i, d in enumerate(densities):
        if d < 1:
            k = max(1, int(d * deltas[i].numel()))
            flat = deltas[i].reshape(-1)
            order = torch.sort(flat.abs().float(), descending=True, stable=True).indices[:k]
            mask = torch.zeros_like(flat)
            mask[order] = 1
            deltas[i] = (flat * mask).reshape(deltas[i].shape)
    w = torch.tensor(weights, dtype=BF16).reshape(-1, 1, 1)
    deltas = deltas * w
    if consensus:
        majority = (deltas.sum(dim=0) >= 0).to(BF16) * 2 - 1
        mask = deltas.sign() == majority
        mixed = (deltas * mask).sum(dim=0)
        divisor = (w * mask).sum(dim=0)
        divisor[divisor == 0] = 1
        mixed = mixed / divisor
    else:
        mixed = deltas.sum(dim=0)
    return base + mixed


@pytest.mark.parametrize("method,consensus", [("task_arithmetic", False), ("ties", True)])
def test_bfloat16_compute_follows_mergekit_bit_for_bit(method, consensus):
    base, models = _inputs()
    weights, densities = [0.5, 0.3, 0.2], [1.0, 1.0, 1.0] if not consensus else [0.5, 0.7, 0.6]
    params = resolve_params({"method": method, "weights": weights, "density": densities, "dtype": "bfloat16"}, 3)
    merged, _ = merge_tensor("model.layers.0.mlp.up_proj.weight", base, models, params, compute_dtype=BF16)
    assert merged.dtype == BF16
    assert torch.equal(merged, _mergekit_gta_bf16(base, models, weights, densities, consensus))


def test_bfloat16_compute_differs_from_float32_compute():
    """The point of the option: rounding every step in bfloat16 is not the float32 merge rounded once."""
    base, models = _inputs(seed=1)
    params = resolve_params({"method": "ties", "weights": [0.5, 0.3, 0.2], "density": 0.5}, 3)
    name = "model.layers.0.mlp.up_proj.weight"
    low, _ = merge_tensor(name, base, models, params, compute_dtype=BF16)
    high, _ = merge_tensor(name, base, models, params)
    assert high.dtype == torch.float32
    differ = (low != high.to(BF16)).float().mean().item()
    assert 0.005 < differ < 0.5  # a few % of entries land on the neighbouring bfloat16 value
    rel = ((low.float() - high).abs().max() / high.abs().max()).item()
    assert rel < 2 * 2.0**-7  # within two bfloat16 ulps of the largest magnitude


def test_kernels_keep_the_compute_dtype():
    base, models = _inputs(seed=2)
    deltas = torch.stack([K.task_vector(m, base, BF16) for m in models])
    assert deltas.dtype == BF16
    assert K.sparsify_magnitude(deltas[0], 0.3).dtype == BF16
    assert K.sparsify_breadcrumbs(deltas[0], 0.3, 0.01).dtype == BF16
    assert int(torch.count_nonzero(K.sparsify_breadcrumbs(deltas[0], 0.3, 0.01))) == int(0.3 * deltas[0].numel())
    assert K.merge_task_vectors(deltas, [0.5, 0.3, 0.2], consensus="sum", normalize=True, base=base).dtype == BF16
    assert K.model_stock(base, models).dtype == BF16
    probs = K.della_keep_probabilities(deltas[0], 0.5, 0.1)  # ranks above 256 stay exact: float32
    assert probs.dtype == torch.float32 and torch.isclose(probs.max(), torch.tensor(0.6))


@pytest.mark.parametrize("method", ["ties", "linear"])
def test_merge_folders_computes_in_dtype_then_casts_to_out_dtype(method, tiny_base, specialists, tmp_path):
    """dtype=bfloat16 on float32 inputs: the fused float32 kernels step aside, the torch reference merges
    the inputs cast to bfloat16; out_dtype=float32 then only widens the bfloat16 result."""
    cfg = {"method": method, "weights": [0.6, 0.4], "density": 0.5, "dtype": "bfloat16"}
    merge_folders(cfg, tiny_base, specialists, tmp_path / "bf16")
    merge_folders({**cfg, "out_dtype": "float32"}, tiny_base, specialists, tmp_path / "wide")
    merge_folders({**cfg, "dtype": None}, tiny_base, specialists, tmp_path / "f32")
    params = resolve_params(cfg, 2)
    srcs = [SafetensorsFolder(p) for p in (tiny_base, *specialists, tmp_path / "bf16", tmp_path / "wide",
                                              tmp_path / "f32")]
    base, a, b, low, wide, f32 = srcs
    try:
        name = "model.layers.0.mlp.up_proj.weight"
        expected, _ = merge_tensor(name, base.get(name), [a.get(name), b.get(name)], params, compute_dtype=BF16)
        assert low.get(name).dtype == BF16 and torch.equal(low.get(name), expected)
        assert wide.get(name).dtype == torch.float32 and torch.equal(wide.get(name), expected.float())
        assert f32.get(name).dtype == torch.float32 and not torch.equal(f32.get(name).to(BF16), expected)
    finally:
        for s in srcs:
            s.close()
