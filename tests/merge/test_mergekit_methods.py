"""mergekit's newer methods (sce, nuslerp, multislerp, karcher, nearswap): mergekit 0.1.5's results on a
committed reference (tests/fixtures/mergekit_methods, generated once with mergekit), identities of each
method, their settings' validation, and the mergekit YAML path end to end on the tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from mixmerge.merge import InMemoryMerger, merge_folders, standalone
from mixmerge.merge import kernels as K
from mixmerge.merge import mergekit_methods as MK
from mixmerge.merge.combine import merge_tensor
from mixmerge.merge.io import SafetensorsFolder
from mixmerge.merge.mergekit_yaml import mergekit_to_merge_cfg
from mixmerge.merge.params import resolve_params

REFERENCE = Path(__file__).resolve().parents[1] / "fixtures" / "mergekit_methods" / "reference.safetensors"
NAME = "model.layers.0.mlp.up_proj.weight"


def _reference():
    with safe_open(str(REFERENCE), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iterator
    return {k[len("case."):]: json.loads(v) for k, v in meta.items() if k.startswith("case.")}, tensors


CASES, TENSORS = _reference()


def test_the_reference_covers_every_method():
    assert {c["method"] for c in CASES.values()} == {"sce", "nuslerp", "multislerp", "karcher", "nearswap"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_equals_mergekit(case):
    """Each case replayed through the merge config (mergekit's parameter names) gives mergekit's tensor;
    float32 in, and the same operations in the same order, so equal to the last bit here."""
    spec = CASES[case]
    cfg = {"method": spec["method"], **{("weights" if k == "weight" else k): v for k, v in spec["parameters"].items()}}
    models, base = spec["models"], spec["base"]
    if spec["method"] == "nearswap":  # mergekit's base is the first of the two models
        models, base = [base, *models], None
    params = resolve_params(cfg, len(models))
    got, _ = merge_tensor(NAME, TENSORS[base] if base else None, [TENSORS[m] for m in models], params)
    torch.testing.assert_close(got, TENSORS[f"case.{case}"], rtol=0, atol=1e-6)


def _inputs(n=3, seed=0, shape=(5, 7)):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    return base, [base + 0.1 * torch.randn(shape, generator=g) for _ in range(n)]


def test_sce_keeps_the_top_variance_fraction():
    base, models = _inputs()
    out = MK.sce(base, models, select_topk=0.4)
    assert int((out != base).sum()) == int(0.4 * base.numel())  # the others' task vectors are masked to 0
    torch.testing.assert_close(MK.sce(base, models, 1.0), MK.sce(base, models, 3.0), rtol=0, atol=0)


def _sce_reference(base, models, fraction):
    """SCE step by step in the inputs' dtype, from the paper and mergekit 0.1.5's sce.py: select by the
    variance across task vectors, weight by each one's mean square, erase minority signs, average."""
    tvs = torch.stack([m - base for m in models])
    var = torch.var(tvs, dim=0, unbiased=False)
    k = int(torch.count_nonzero(var) * fraction)
    mask = torch.zeros_like(var)
    mask.view(-1)[torch.topk(var.abs().view(-1), k=k).indices] = 1
    tvs = tvs * mask
    sign = torch.where(tvs.sum(0) >= 0, 1.0, -1.0).to(tvs.dtype)
    energy = tvs.square().reshape(len(models), -1).mean(1)
    w = (energy / energy.sum().item()).view(-1, *([1] * var.dim())) * (tvs.sign() == sign)
    return base + (tvs * w).sum(0) / w.sum(0).clamp(min=1e-6)


def test_sce_computes_in_the_inputs_dtype_as_mergekit():
    """merge.dtype bfloat16: the variances, the cut and the weights are bfloat16, as in mergekit (the cut on
    float32 variances keeps other entries: the parity suite's bf16 SCE case differed in 46 entries)."""
    base, models = _inputs(shape=(16, 32))
    base, models = base.bfloat16(), [m.bfloat16() for m in models]
    out = MK.sce(base, models, select_topk=0.3)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, _sce_reference(base, models, 0.3), rtol=0, atol=0)


def test_sce_of_one_model_or_identical_models_is_that_model():
    base, (m, *_) = _inputs()
    torch.testing.assert_close(MK.sce(base, [m]), m, rtol=0, atol=1e-6)
    torch.testing.assert_close(MK.sce(base, [m, m, m]), m, rtol=0, atol=1e-6)


def test_sce_drops_sign_conflicts_and_weights_by_energy():
    base = torch.zeros(4)
    a, b = torch.tensor([1.0, 2.0, -1.0, 1.0]), torch.tensor([-0.5, 2.0, 3.0, 3.0])
    wa, wb = 1.75, 5.5625  # mean squares of a and b
    out = MK.sce(base, [a, b])
    # entry 0: only a agrees with the summed sign, entry 2 only b; entry 3: the energy-weighted mean
    torch.testing.assert_close(out, torch.tensor([1.0, 2.0, 3.0, (wa * 1 + wb * 3) / (wa + wb)]))


@pytest.mark.parametrize("flatten", [True, False])
@pytest.mark.parametrize("row_wise", [True, False])
def test_nuslerp_of_identical_models_is_that_model(flatten, row_wise):
    base, (m, *_) = _inputs()
    for b in (base, None):
        out = MK.nuslerp(b, [m, m.clone()], [0.3, 0.7], flatten=flatten, row_wise=row_wise)
        torch.testing.assert_close(out, m, rtol=0, atol=1e-6)


def test_nuslerp_without_base_is_slerp_of_the_weights():
    _, (a, b, _) = _inputs()
    torch.testing.assert_close(MK.nuslerp(None, [a, b], [1.0, 3.0]), K.slerp(0.75, a, b), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(MK.nuslerp(None, [a, b], [1.0, 0.0]), a, rtol=0, atol=1e-6)


def test_nuslerp_row_by_row_interpolates_each_row():
    base, (a, b, _) = _inputs()
    out = MK.nuslerp(base, [a, b], [0.5, 0.5], flatten=False)
    for r in range(base.shape[0]):
        want = base[r] + K.slerp(0.5, a[r] - base[r], b[r] - base[r])
        torch.testing.assert_close(out[r], want, rtol=1e-5, atol=1e-6)
    cols = MK.nuslerp(base, [a, b], [0.5, 0.5], flatten=False, row_wise=True)
    torch.testing.assert_close(cols[:, 2], base[:, 2] + K.slerp(0.5, a[:, 2] - base[:, 2], b[:, 2] - base[:, 2]),
                               rtol=1e-5, atol=1e-6)


def test_multislerp_of_two_equal_norm_vectors_at_equal_weights_is_slerp_midpoint():
    u = torch.tensor([3.0, 0.0, 4.0])
    v = torch.tensor([0.0, 5.0, 0.0])
    torch.testing.assert_close(MK.multislerp(None, [u, v], [1.0, 1.0]), K.slerp(0.5, u, v), rtol=1e-5, atol=1e-6)
    base = torch.ones(3)
    torch.testing.assert_close(MK.multislerp(base, [base + u, base + v], [2.0, 2.0]), base + K.slerp(0.5, u, v),
                               rtol=1e-5, atol=1e-6)


def test_multislerp_keeps_the_weighted_mean_norm_and_passes_one_model_through():
    base, models = _inputs()
    w = [0.2, 0.3, 0.5]
    out = MK.multislerp(base, models, w)
    mean_norm = sum(wi * (m - base).norm() for wi, m in zip(w, models, strict=True))
    assert math.isclose(float((out - base).norm()), float(mean_norm), rel_tol=1e-5)
    torch.testing.assert_close(MK.multislerp(base, models[:1], [0.4]), models[0], rtol=0, atol=0)


def test_multislerp_refuses_cancelling_directions_of_three_models():
    a = torch.tensor([1.0, 0.0])
    with pytest.raises(ValueError, match="weighted sum of the model directions is zero"):
        MK.multislerp(None, [a, -a, torch.zeros(2)], [1.0, 1.0, 1.0])


def test_multislerp_of_unmoved_tensors_is_the_base():
    """Three specialists that all left a tensor at the base (a norm under LoRA): the base, where mergekit
    raises its 'weighted sum is zero' error."""
    base = torch.tensor([1.0, 2.0])
    torch.testing.assert_close(MK.multislerp(base, [base.clone()] * 3, [1.0, 1.0, 1.0]), base, rtol=0, atol=0)


def test_karcher_mean_of_one_or_identical_models_is_that_model():
    _, (m, *_) = _inputs()
    torch.testing.assert_close(MK.karcher_mean([m]), m, rtol=0, atol=0)
    torch.testing.assert_close(MK.karcher_mean([m, m.clone(), m.clone()]), m, rtol=1e-6, atol=1e-6)


def test_karcher_mean_of_two_is_the_geodesic_midpoint_and_weights_move_it():
    u, v = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    mid = MK.karcher_mean([u, v])
    torch.testing.assert_close(mid, 1.5 * torch.tensor([1.0, 1.0]) / math.sqrt(2), rtol=1e-5, atol=1e-6)
    # weights 3:1 -> a quarter of the 90-degree arc from u, and the weighted mean norm 1.25
    want = 1.25 * torch.tensor([math.cos(math.pi / 8), math.sin(math.pi / 8)])
    torch.testing.assert_close(MK.karcher_mean([u, v], [3.0, 1.0], max_iter=100, tol=1e-9), want,
                               rtol=1e-4, atol=1e-5)


def test_nearswap_threshold_limits():
    a = torch.tensor([0.0, 1.0, 2.0, 3.0])
    b = torch.tensor([0.5, 1.0, 2.2, 1.0])
    torch.testing.assert_close(MK.nearswap(a, b, 0.0), a, rtol=0, atol=0)  # t -> 0: the base everywhere it differs
    torch.testing.assert_close(MK.nearswap(a, b, 1e9), b, rtol=0, atol=0)  # t -> inf: the other model
    # |a - b| = 0.2 with t = 0.1: halfway
    torch.testing.assert_close(MK.nearswap(a, b, 0.1)[2], torch.tensor(2.1))


@pytest.mark.parametrize(("cfg", "match"), [
    ({"method": "sce", "select_topk": 0}, r"merge.select_topk=.* must be above 0"),
    ({"method": "sce", "select_topk": "x"}, r"merge.select_topk='x' is not a number"),
    ({"method": "sce", "select_topk": [{"filter": "mlp", "value": 0.5}]}, r"merge.select_topk=.*no rule without"),
    ({"method": "nuslerp", "nuslerp_flatten": "yes"}, r"merge.nuslerp_flatten='yes' must be true or false"),
    ({"method": "nuslerp", "nuslerp_row_wise": 1}, r"merge.nuslerp_row_wise=1 must be true or false"),
    ({"method": "multislerp", "eps": 0}, r"merge.eps=0 must be a positive number"),
    ({"method": "multislerp", "normalize_weights": [True, False]}, r"merge.normalize_weights=.*give one value"),
    ({"method": "karcher", "max_iter": -1}, r"merge.max_iter=-1 must be a whole number"),
    ({"method": "karcher", "tol": float("nan")}, r"merge.tol=nan is not a finite number"),
    ({"method": "nearswap"}, r"merge.method=nearswap needs merge.t"),
    ({"method": "ties", "select_topk": 0.5}, r"merge.select_topk is a setting of merge.method=sce; .*ties"),
    ({"method": "karcher", "nuslerp_flatten": False}, r"merge.nuslerp_flatten is a setting of merge.method=nuslerp"),
])
def test_settings_are_checked_naming_the_key(cfg, match):
    with pytest.raises(ValueError, match=match):
        resolve_params(cfg, 2)


def test_model_counts_are_mergekits():
    for method in ("nuslerp", "nearswap"):
        with pytest.raises(ValueError, match=f"merge.method={method} merges exactly 2 models, got 3"):
            resolve_params({"method": method, "t": 0.1}, 3)
    with pytest.raises(ValueError, match="merge.method=sce needs merge.base"):
        merge_folders({"method": "sce"}, None, [Path("/nonexistent")] * 2, Path("/nonexistent/out"))


def test_defaults_are_mergekits():
    assert resolve_params({"method": "nuslerp"}, 2).options == {"nuslerp_flatten": True, "nuslerp_row_wise": False}
    assert resolve_params({"method": "multislerp"}, 3).options == {"normalize_weights": True, "eps": 1e-8}
    assert resolve_params({"method": "karcher"}, 3).options == {"max_iter": 10, "tol": 1e-5}
    assert resolve_params({"method": "sce"}, 2).options["select_topk"].at(NAME, 2) == 1.0
    # nearswap's t is a distance, not SLERP's fraction: any number
    assert resolve_params({"method": "nearswap", "t": 2.5}, 2).t.at(NAME, 2) == 2.5


def test_select_topk_may_vary_by_layer():
    params = resolve_params({"method": "sce", "select_topk": [0.2, 1.0]}, 2)
    at = params.options["select_topk"].at
    assert at("model.layers.0.mlp.up_proj.weight", 3) == 0.2
    assert at("model.layers.1.mlp.up_proj.weight", 3) == pytest.approx(0.6)
    assert at("lm_head.weight", 3) == 0.2  # outside the layer stack: the first value, as mergekit


@pytest.mark.parametrize(("doc", "want"), [
    # sce: the base gives no task vector and no weight is needed (mergekit reads none)
    ({"merge_method": "sce", "base_model": "B", "models": [{"model": "B"}, {"model": "X"},
                                                           {"model": "Y", "parameters": {"weight": 2}}],
      "parameters": {"select_topk": 0.3, "int8_mask": True}},
     {"method": "sce", "base": "B", "models": ["X", "Y"], "select_topk": 0.3}),
    # karcher: the base is one of the averaged inputs; weights are not read
    ({"merge_method": "karcher", "base_model": "B", "models": [{"model": "X", "parameters": {"weight": 0.9}},
                                                               {"model": "Y"}], "parameters": {"max_iter": 5}},
     {"method": "karcher", "base": "B", "models": ["X", "Y", "B"], "max_iter": 5}),
    # nearswap: the base is the first of the two models, t required
    ({"merge_method": "nearswap", "base_model": "B", "models": [{"model": "X"}], "parameters": {"t": 0.001}},
     {"method": "nearswap", "base": "B", "models": ["B", "X"], "t": 0.001}),
    # nuslerp: weights per model, another method's setting ignored (mergekit ignores it)
    ({"merge_method": "nuslerp", "base_model": "B", "models": [{"model": "X", "parameters": {"weight": 1}},
                                                               {"model": "Y", "parameters": {"weight": 3}}],
      "parameters": {"nuslerp_flatten": False, "select_topk": 0.5}},
     {"method": "nuslerp", "base": "B", "models": ["X", "Y"], "weights": [1, 3], "nuslerp_flatten": False}),
    ({"merge_method": "multislerp", "models": [{"model": "X"}, {"model": "Y"}],
      "parameters": {"weight": 0.5, "eps": "1e-6"}},
     {"method": "multislerp", "base": None, "models": ["X", "Y"], "weights": [0.5, 0.5], "eps": "1e-6"}),
])
def test_mergekit_yaml_translation(doc, want):
    cfg = mergekit_to_merge_cfg(doc)
    assert cfg == want
    resolve_params(cfg, len(cfg["models"]))  # and it is a valid config


@pytest.mark.parametrize(("doc", "match"), [
    ({"merge_method": "nuslerp", "base_model": "B", "models": [{"model": "X"}, {"model": "Y"}]},
     r"model 'X' has no weight; mergekit requires a weight"),
    ({"merge_method": "multislerp", "models": [{"model": "X", "parameters": {"weight": 1}}, {"model": "Y"}]},
     r"model 'Y' has no weight"),
    ({"merge_method": "nearswap", "base_model": "B", "models": [{"model": "X"}]}, r"nearswap needs parameters.t"),
    ({"merge_method": "nearswap", "models": [{"model": "X"}, {"model": "Y"}], "parameters": {"t": 0.1}},
     r"nearswap needs base_model and exactly one other model"),
    ({"merge_method": "karcher", "models": [{"model": "X"}], "parameters": {"tol": [1e-5, 1e-6]}},
     r"parameters.tol=.*not supported; use one value"),
])
def test_mergekit_yaml_refusals(doc, match):
    with pytest.raises(ValueError, match=match):
        mergekit_to_merge_cfg(doc)


def _tensor(folder, name):
    f = SafetensorsFolder(folder)
    try:
        return f.get(name).float()
    finally:
        f.close()


def test_from_mergekit_end_to_end_nuslerp_without_and_with_base(tiny_base, specialists, tmp_path):
    """The standalone command on a mergekit YAML: with no base_model NuSLERP interpolates the weights, with
    one the task vectors (the engine hands the method no base when the merge has none)."""
    name = "model.layers.1.self_attn.q_proj.weight"
    a, b, base = (_tensor(p, name) for p in (*specialists, tiny_base))
    for with_base in (False, True):
        doc = {"merge_method": "nuslerp", "models": [{"model": str(s), "parameters": {"weight": w}}
                                                     for s, w in zip(specialists, (0.25, 0.75), strict=True)]}
        if with_base:
            doc["base_model"] = str(tiny_base)
        path = tmp_path / f"mk{with_base}.yml"
        path.write_text(yaml.safe_dump(doc))
        out = tmp_path / f"out{with_base}"
        standalone.run({"method": "ties", "from_mergekit": str(path), "output": str(out)})
        want = MK.nuslerp(base if with_base else None, [a, b], [0.25, 0.75])
        torch.testing.assert_close(_tensor(out, name), want, rtol=0, atol=1e-6)
    assert not torch.allclose(_tensor(tmp_path / "outFalse", name), _tensor(tmp_path / "outTrue", name))


def test_pipeline_and_streamed_merges_agree(tiny_base, specialists, tmp_path):
    """merge=sce with a layer gradient of select_topk, and merge=karcher: the in-memory merger (sweeps)
    gives the streamed merge's tensors."""
    merger = InMemoryMerger(tiny_base, specialists)
    for cfg in ({"method": "sce", "select_topk": [0.3, 1.0]}, {"method": "karcher", "weights": [0.7, 0.3]},
                {"method": "nearswap", "t": 1e-3}, {"method": "multislerp", "weights": [0.2, 0.8]}):
        out = tmp_path / cfg["method"]
        merge_folders(cfg, tiny_base, specialists, out)
        got = {n: t for n, t, _ in merger.merged_tensors(resolve_params(cfg, 2))}
        for name in ("model.layers.0.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight"):
            torch.testing.assert_close(got[name], _tensor(out, name), rtol=1e-5, atol=1e-6)
    # the gradient reached the kernel: layer 0 (select_topk 0.3) leaves most entries at the base
    first = _tensor(tmp_path / "sce", "model.layers.0.mlp.up_proj.weight")
    last = _tensor(tmp_path / "sce", "model.layers.1.mlp.up_proj.weight")
    base0, base1 = (_tensor(tiny_base, f"model.layers.{i}.mlp.up_proj.weight") for i in (0, 1))
    assert (first == base0).float().mean() > 0.6 > (last == base1).float().mean()
