"""The layer-wise search: trial scalars -> per-block schedule (pure), the seed from the analysis, the merge it
gives on the tiny model, and the sweeper's seeded CMA-ES study on the toy app."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from mixmerge.merge.params import resolve_params
from mixmerge.sweep import layerwise as lw
from mixmerge.sweep import space as sp
from tests.merge.conftest import make_specialist

TIES = {"method": "ties", "weight": 0.5, "weights": None, "density": 0.5, "lambda": 1.0}


def _point(blocks: int, fields=("weight", "density"), value=0.0, **given) -> dict:
    point = {lw.param_name(g, f, b): value for f in fields for g in lw.GROUPS for b in range(blocks)}
    return {**point, **given}


def _name(layer: int, part: str) -> str:
    return f"model.layers.{layer}.{part}.weight"


# -- blocks and gradients ------------------------------------------------------------------------------------

def test_blocks_are_contiguous_runs_of_layers():
    assert lw.layers_of_blocks(6, 4) == [[0, 1], [2], [3, 4], [5]]
    assert lw.layers_of_blocks(24, 4) == [list(range(i, i + 6)) for i in range(0, 24, 6)]
    assert lw.layers_of_blocks(2, 2) == [[0], [1]]
    assert lw.layers_of_blocks(5, 1) == [[0, 1, 2, 3, 4]]
    with pytest.raises(ValueError, match=r"layerwise.blocks=3 is more than the model's 2 layers"):
        lw.layers_of_blocks(2, 3)


def test_block_gradient_is_piecewise_constant_under_mergekit_interpolation():
    """A gradient of one value per layer puts each layer exactly on its block's value (no blending)."""
    sched = resolve_params({**TIES, "weights": [[{"value": lw.block_gradient([0.1, 0.2, 0.7, 0.9], 6)}],
                                                [{"value": 0.5}]]}, 2)
    got = [sched.for_tensor(_name(layer, "mlp.up_proj"), 6).weights[0] for layer in range(6)]
    assert got == pytest.approx([0.1, 0.1, 0.2, 0.7, 0.7, 0.9], abs=1e-12)


@pytest.mark.parametrize("n_layers", [1, 2, 7, 30])
def test_a_constant_list_equals_the_scalar(n_layers):
    """Every block at value c: every tensor's parameters are those of the scalar merge.weight=c."""
    c = 0.3
    offsets = {"weight": {g: [0.0] * 1 for g in lw.GROUPS}}
    values = lw.block_values({**TIES, "method": "linear"}, {g: [c] for g in lw.GROUPS}, offsets)
    cfg = lw.schedule_config({"method": "linear", "weight": c, "weights": None}, values, n_layers)
    layered = resolve_params(cfg, 2)
    scalar = resolve_params({"method": "linear", "weight": c}, 2)
    names = ["model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"] + [
        _name(layer, part) for layer in range(n_layers)
        for part in ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj", "input_layernorm")]
    for name in names:
        assert layered.for_tensor(name, n_layers).weights == pytest.approx(scalar.weights, abs=1e-12), name


def test_blocks_map_to_their_layers_and_filters_hit_attention_and_mlp():
    n_layers = 6  # three blocks: layers [0, 1], [2, 3], [4, 5]
    values = {"weight": {"attn": [0.1, 0.2, 0.3], "mlp": [0.6, 0.7, 0.8]},
              "density": {"attn": [0.25, 0.35, 0.45], "mlp": [0.65, 0.75, 0.85]}}
    params = resolve_params(lw.schedule_config({**TIES, "weight": 0.4, "density": 0.55}, values, n_layers), 2)
    for layer in range(n_layers):
        b = layer // 2
        assert lw.block_of_layer(layer, n_layers, 3) == b
        for part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"):
            p = params.for_tensor(_name(layer, part), n_layers)
            assert p.weights == pytest.approx([values["weight"]["attn"][b], 1 - values["weight"]["attn"][b]])
            assert p.densities == pytest.approx([values["density"]["attn"][b]] * 2)
        for part in ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
            p = params.for_tensor(_name(layer, part), n_layers)
            assert p.weights == pytest.approx([values["weight"]["mlp"][b], 1 - values["weight"]["mlp"][b]])
            assert p.densities == pytest.approx([values["density"]["mlp"][b]] * 2)
        p = params.for_tensor(_name(layer, "post_attention_layernorm"), n_layers)  # neither group: merge.weight
        assert p.weights == pytest.approx([0.4, 0.6]) and p.densities == pytest.approx([0.55, 0.55])
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"):
        p = params.for_tensor(name, n_layers)
        assert p.weights == pytest.approx([0.4, 0.6]) and p.densities == pytest.approx([0.55, 0.55])


# -- offsets, seeds and bounds ------------------------------------------------------------------------------

def test_offsets_move_the_seed_in_logit_space():
    assert lw.shifted(0.3, 0.0) == pytest.approx(0.3, abs=1e-15)
    assert lw.shifted(0.5, 2.0) == pytest.approx(1 / (1 + math.exp(-2)))
    assert lw.shifted(0.3, 1.0) > 0.3 > lw.shifted(0.3, -1.0)
    assert lw.shifted(0.5, 0.0, 0.15, 0.85) == pytest.approx(0.5)
    assert 0.15 < lw.shifted(0.5, -30.0, 0.15, 0.85) < lw.shifted(0.5, 30.0, 0.15, 0.85) < 0.85


def test_the_zero_point_is_the_seed_and_della_densities_stay_valid():
    shares = {"attn": [0.7, 0.0], "mlp": [0.4, 1.0]}  # a block one task never moved is held inside (0, 1)
    della = {"method": "della", "weight": 0.5, "density": 0.4, "epsilon": 0.15}
    values = lw.block_values(della, shares, lw.point_offsets(_point(2), 2, ("weight", "density")))
    assert values["weight"] == {"attn": pytest.approx([0.7, lw.SHARE_MARGIN]),
                                "mlp": pytest.approx([0.4, 1 - lw.SHARE_MARGIN])}
    assert values["density"] == {"attn": pytest.approx([0.4, 0.4]), "mlp": pytest.approx([0.4, 0.4])}
    extreme = lw.block_values(della, shares, lw.point_offsets(_point(2, value=5.0), 2, ("weight", "density")))
    cfg = lw.schedule_config(della, extreme, 4)
    resolve_params(cfg, 2)  # density ± epsilon inside (0, 1) for every block: accepted
    assert all(0.15 < d < 0.85 for ds in extreme["density"].values() for d in ds)


def test_block_space_searches_densities_only_for_sparsifying_methods():
    ties = lw.block_space(blocks=3, method="ties", weight_range=2.0, density_range=1.5)
    assert len(ties["params"]) == 12
    assert ties["params"]["+layerwise.point.mlp_density_2"] == "interval(-1.5, 1.5)"
    assert ties["params"]["+layerwise.point.attn_weight_0"] == "interval(-2.0, 2.0)"
    assert ties["enqueue"] == [dict.fromkeys(ties["params"], 0.0)]
    linear = lw.block_space(blocks=3, method="linear", weight_range=2.0, density_range=2.0)
    assert sorted(linear["params"]) == sorted(f"+layerwise.point.{g}_weight_{b}" for g in ("attn", "mlp")
                                              for b in range(3))
    with pytest.raises(ValueError, match="merge.method=slerp"):
        lw.block_space(blocks=2, method="slerp", weight_range=2.0, density_range=2.0)
    with pytest.raises(ValueError, match="layerwise.blocks=0"):
        lw.block_space(blocks=0, method="ties", weight_range=2.0, density_range=2.0)
    with pytest.raises(ValueError, match="layerwise.weight_range"):
        lw.block_space(blocks=2, method="ties", weight_range=0, density_range=2.0)


def test_the_enqueued_seed_is_checked_against_the_space():
    specs = [sp.ParamSpec("a", "float", -1.0, 1.0), sp.ParamSpec("b", "float", -1.0, 1.0)]
    sp.check_points(specs, [{"a": 0.0, "b": 1.0}])
    with pytest.raises(sp.SearchSpaceError, match=r"missing \['b'\]"):
        sp.check_points(specs, [{"a": 0.0}])
    with pytest.raises(sp.SearchSpaceError, match="b=2.0 is outside"):
        sp.check_points(specs, [{"a": 0.0, "b": 2.0}])


def test_invalid_trials_are_refused_naming_the_field():
    layerwise = {"blocks": 2, "point": _point(2)}
    lw.validate_layerwise(layerwise, TIES, 2)
    with pytest.raises(ValueError, match=r"missing \['mlp_weight_1'\]"):
        lw.validate_layerwise({"blocks": 2, "point": {k: v for k, v in _point(2).items() if k != "mlp_weight_1"}},
                              TIES, 2)
    with pytest.raises(ValueError, match="exactly two specialists"):
        lw.validate_layerwise(layerwise, TIES, 3)
    with pytest.raises(ValueError, match="merge.weights=null"):
        lw.validate_layerwise(layerwise, {**TIES, "weights": [0.5, 0.5]}, 2)
    with pytest.raises(ValueError, match=r"merge.density=1.0 is the seed"):
        lw.validate_layerwise(layerwise, {**TIES, "density": 1.0}, 2)
    with pytest.raises(ValueError, match="layerwise.point.attn_weight_0"):
        lw.validate_layerwise({"blocks": 2, "point": _point(2, attn_weight_0=math.nan)}, TIES, 2)
    lw.validate_layerwise({"blocks": 2, "point": None}, {"method": "slerp"}, 3)  # not a layer-wise run: no check


def test_shares_add_the_squares_of_a_blocks_module_norms():
    rows = []
    for model, scale in (("a", 1.0), ("b", 2.0)):
        for layer in range(4):
            for module in ("q_proj", "k_proj", "gate_proj", "down_proj", "norm"):
                rows.append({"model": model, "layer": layer, "module": module, "l2": scale * (layer + 1)})
            rows.append({"model": model, "layer": layer, "module": "all", "l2": 99.0})  # aggregate rows ignored
        rows.append({"model": model, "layer": "all", "module": "q_proj", "l2": 99.0})
    shares = lw.block_shares(rows, ["a", "b"], 4, 2)
    # attn, block 0 (layers 0, 1): a = sqrt(2 * (1 + 4)), b = 2a, share a / (a + b) = 1/3; so for every block
    assert shares == {"attn": pytest.approx([1 / 3, 1 / 3]), "mlp": pytest.approx([1 / 3, 1 / 3])}
    rows.append({"model": "a", "layer": 3, "module": "v_proj", "l2": 10.0})
    a1, b1 = math.sqrt(2 * (9 + 16) + 100), math.sqrt(2 * 4 * (9 + 16))
    assert lw.block_shares(rows, ["a", "b"], 4, 2)["attn"][1] == pytest.approx(a1 / (a1 + b1))
    with pytest.raises(ValueError, match="got 3 specialists"):
        lw.block_shares(rows, ["a", "b", "c"], 4, 2)


# -- on the tiny model: the seed from the analysis, and the merged weights ------------------------------------

@pytest.fixture(scope="module")
def tiny_specialists(tiny_base, session_store, tmp_path_factory):
    """Two fake specialists; codegen moves attention 3x more than MLP, codesum the reverse."""
    from mixmerge.stages import Variant

    root = tmp_path_factory.mktemp("layerwise")
    out = []
    for i, (name, attn_scale, mlp_scale) in enumerate((("codegen", 0.03, 0.01), ("codesum", 0.01, 0.03))):
        folder = make_specialist(tiny_base.path, root / name, seed=300 + i, scale=0.0)
        state = load_file(str(folder / "model.safetensors"))
        gen = torch.Generator().manual_seed(400 + i)
        for key, t in state.items():
            scale = attn_scale if "self_attn" in key else mlp_scale if "mlp" in key else 0.005
            state[key] = t + scale * torch.randn(t.shape, generator=gen)
        from safetensors.torch import save_file

        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        out.append(Variant(f"specialist/{name}", folder, f"key-{name}"))
    return out


def _hand_shares(base_path, specialists, group_filter: str, layers: list[int]) -> float:
    """codegen's share of the delta L2 over the named layers' tensors of one group, from the weights."""
    base = load_file(str(base_path / "model.safetensors"))
    norms = []
    for v in specialists:
        state = load_file(str(v.path / "model.safetensors"))
        sq = sum(float(((state[k].double() - base[k].double()) ** 2).sum()) for k in base
                 if group_filter in k and any(f"layers.{layer}." in k for layer in layers))
        norms.append(math.sqrt(sq))
    return norms[0] / (norms[0] + norms[1])


def test_seed_is_each_blocks_delta_norm_share_and_is_measured_once(tiny_base, tiny_specialists, session_store,
                                                                   caplog):
    from mixmerge.stages import _with_layerwise

    cfg = {"layerwise": {"blocks": 2, "point": _point(2)}}
    with caplog.at_level("INFO", logger="mixmerge.cache"):
        merged_cfg, details = _with_layerwise(cfg, dict(TIES), session_store, tiny_base, tiny_specialists)
        _with_layerwise(cfg, dict(TIES), session_store, tiny_base, tiny_specialists)
    assert sum("building delta norms" in r.message for r in caplog.records) == 1  # measured once, then cached
    record = details["layerwise"]
    assert record["layers"] == [[0], [1]]
    for g, group_filter in (("attn", "self_attn"), ("mlp", "mlp")):
        expected = [_hand_shares(tiny_base.path, tiny_specialists, group_filter, [b]) for b in range(2)]
        assert record["shares"][g] == pytest.approx(expected, rel=1e-9)
        assert record["weight"][g] == pytest.approx(expected, rel=1e-9)  # the zero point is the seed
        assert record["density"][g] == pytest.approx([0.5, 0.5])
    assert all(s > 0.6 for s in record["shares"]["attn"]) and all(s < 0.4 for s in record["shares"]["mlp"])
    params = resolve_params(merged_cfg, 2)
    w = params.for_tensor("model.layers.1.mlp.up_proj.weight", 2).weights
    assert w == pytest.approx([record["weight"]["mlp"][1], 1 - record["weight"]["mlp"][1]])
    assert json.loads(json.dumps(details)) == details  # goes into metrics.json as is


def test_in_memory_merge_gives_each_block_and_group_its_own_weight(tiny_base, tiny_specialists):
    """Linear merge of two specialists: every tensor is w·A + (1 − w)·B with its block's w."""
    from mixmerge.merge import InMemoryMerger
    from mixmerge.models import load_model

    merger = InMemoryMerger(tiny_base.path, [v.path for v in tiny_specialists])
    values = {"weight": {"attn": [0.2, 0.9], "mlp": [0.6, 0.35]}}
    cfg = lw.schedule_config({"method": "linear", "weight": 0.5, "weights": None}, values, merger.n_layers)
    model = load_model(tiny_base.path, dtype="float32")
    report = merger.merge_into(model, cfg)
    assert report["time_s"] < 30
    merged = model.state_dict()
    a, b = (load_file(str(v.path / "model.safetensors")) for v in tiny_specialists)
    checked = set()
    for name, t in merged.items():
        if name not in a:
            continue
        layer = next((i for i in range(merger.n_layers) if f"layers.{i}." in name), None)
        group = "attn" if "self_attn" in name else "mlp" if ".mlp." in name else None
        w = 0.5 if layer is None or group is None else values["weight"][group][layer]
        torch.testing.assert_close(t, w * a[name] + (1 - w) * b[name], rtol=1e-5, atol=1e-6)
        checked.add((layer, group))
    assert {(0, "attn"), (1, "attn"), (0, "mlp"), (1, "mlp"), (None, None)} <= checked


# -- the sweeper: the space, the enqueued seed, CMA-ES ------------------------------------------------------

def test_sweeper_enqueues_the_seed_first_and_cmaes_searches_the_blocks(toy):
    common = ("hparams_search=merge_optuna_layerwise", "merge=ties", "layerwise.blocks=3")
    toy.run(*common, "hydra.sweeper.n_trials=2")
    names = {f"+layerwise.point.{g}_{f}_{b}" for f in ("weight", "density") for g in ("attn", "mlp") for b in range(3)}
    trials = sorted(toy.study("model-merge-ties-layerwise3").trials, key=lambda t: t.number)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 2
    assert set(trials[0].params) == names and set(trials[0].params.values()) == {0.0}  # the seed, enqueued
    assert "cma:generation" in trials[1].system_attrs  # then CMA-ES
    assert set(trials[1].params) == names and all(-2.0 <= v <= 2.0 for v in trials[1].params.values())
    assert len(set(trials[1].params.values())) == len(names)  # every block and group moved separately
    point = json.loads((toy.tmp / "sweep" / "1" / "metrics.json").read_text())["config"]["layerwise"]["point"]
    assert point == {n.rsplit(".", 1)[1]: pytest.approx(v, abs=1e-9) for n, v in trials[1].params.items()}
    toy.run(*common, "hydra.sweeper.n_trials=3", sweep="sweep2")  # resumed: the seed is not enqueued again
    trials = sorted(toy.study("model-merge-ties-layerwise3").trials, key=lambda t: t.number)
    assert len(trials) == 3 and "cma:generation" in trials[2].system_attrs
