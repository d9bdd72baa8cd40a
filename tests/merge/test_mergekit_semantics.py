"""mergekit YAMLs read with mergekit 0.1.5's meaning (issue 15): layer gradients and filters at the top
level and per model, what mergekit refuses and accepts, and where the base model goes."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from mixmerge.merge import standalone
from mixmerge.merge.io import SafetensorsFolder
from mixmerge.merge.mergekit_yaml import mergekit_to_merge_cfg
from mixmerge.merge.params import resolve_params

L0, L1, L2 = (f"model.layers.{i}.mlp.up_proj.weight" for i in range(3))


def _params(doc):
    cfg = mergekit_to_merge_cfg(doc)
    return cfg, resolve_params(cfg, len(cfg["models"]))


def test_top_level_list_is_a_layer_gradient_not_per_model_values():
    """density: [0.2, 0.5, 0.8] over 3 models is a gradient over layers for every model (it was read as
    one density per model)."""
    doc = {"merge_method": "ties", "base_model": "B",
           "models": [{"model": m, "parameters": {"weight": 1.0}} for m in "XYZ"],
           "parameters": {"density": [0.2, 0.5, 0.8]}}
    _, params = _params(doc)
    assert params.for_tensor(L0, 3).densities == [0.2, 0.2, 0.2]
    assert params.for_tensor(L1, 3).densities == [0.5, 0.5, 0.5]
    assert params.for_tensor(L2, 3).densities == [0.8, 0.8, 0.8]
    # outside the layer stack mergekit reads t = 0 (mergekit/plan.py)
    assert params.for_tensor("lm_head.weight", 3).densities == [0.2, 0.2, 0.2]
    assert params.for_tensor("model.layers.1.mlp.up_proj.weight", 5).densities == pytest.approx([0.35] * 3)


def test_top_level_weight_gradient_and_model_filters_fall_back_to_top_level():
    doc = {"merge_method": "task_arithmetic", "base_model": "B",
           "models": [{"model": "X", "parameters": {"weight": [{"filter": "self_attn", "value": 2.0}]}},
                      {"model": "Y"}],
           "parameters": {"weight": [0.0, 1.0], "lambda": [1.0, 3.0]}}
    _, params = _params(doc)
    attn = "model.layers.2.self_attn.q_proj.weight"
    assert params.for_tensor(attn, 3).weights == [2.0, 1.0]  # X's own rule, Y's top-level gradient
    assert params.for_tensor(L0, 3).weights == [0.0, 0.0]  # X: no rule matches -> the top-level gradient
    assert params.for_tensor(L1, 3).weights == [0.5, 0.5]
    assert params.for_tensor(L1, 3).lam == 2.0


def test_weight_gradient_merges_per_layer(tiny_base, specialists, tmp_path):
    """End to end on the tiny model: weight [0, 1] leaves layer 0 and the embeddings at the base and
    gives the last layer the full task vectors."""
    doc = {"merge_method": "task_arithmetic", "base_model": str(tiny_base),
           "models": [{"model": str(s)} for s in specialists], "parameters": {"weight": [0, 1]}}
    (tmp_path / "mk.yml").write_text(yaml.safe_dump(doc))
    standalone.run({"method": "ties", "from_mergekit": str(tmp_path / "mk.yml"), "output": str(tmp_path / "out")})
    n_layers = json.loads((tiny_base / "config.json").read_text())["num_hidden_layers"]
    out, base = SafetensorsFolder(tmp_path / "out"), SafetensorsFolder(tiny_base)
    a, b = SafetensorsFolder(specialists[0]), SafetensorsFolder(specialists[1])
    first = "model.layers.0.mlp.up_proj.weight"
    last = f"model.layers.{n_layers - 1}.mlp.up_proj.weight"
    assert torch.equal(out.get(first), base.get(first))
    assert torch.equal(out.get("model.embed_tokens.weight"), base.get("model.embed_tokens.weight"))
    expected = base.get(last) + (a.get(last) - base.get(last)) + (b.get(last) - base.get(last))
    torch.testing.assert_close(out.get(last), expected, rtol=0, atol=1e-6)
    assert not torch.equal(out.get(last), base.get(last))
    for f in (out, base, a, b):
        f.close()


def test_slerp_gradient_t_outside_the_layer_stack_is_the_first_value():
    _, params = _params({"merge_method": "slerp", "base_model": "A", "models": [{"model": "A"}, {"model": "B"}],
                         "parameters": {"t": [0, 0.5, 1]}})
    for name in ("model.norm.weight", "lm_head.weight", "model.embed_tokens.weight"):
        assert params.t.at(name, 4) == 0.0
    assert params.t.at("model.layers.3.self_attn.q_proj.weight", 4) == 1.0
    assert params.t.at("model.layers.0.self_attn.q_proj.weight", 1) == 1.0  # one layer: t = 1 (mergekit/plan.py)


@pytest.mark.parametrize(("doc", "match"), [
    ({"merge_method": "ties", "base_model": "B", "models": [{"model": "X"}, {"model": "Y"}],
      "parameters": {"density": 0.3}}, r"model 'X' has no weight; mergekit requires a weight"),
    ({"merge_method": "linear", "models": [{"model": "X", "parameters": {"weight": 1}}, {"model": "Y"}]},
     r"model 'Y' has no weight"),
    ({"merge_method": "ties", "base_model": "B",
      "models": [{"model": "X", "parameters": {"weight": [{"filter": "mlp", "value": 1}]}}]},
     r"model 'X' has weight rules with no fallback"),
    ({"merge_method": "slerp", "base_model": "A", "models": [{"model": "A"}, {"model": "B"}],
      "parameters": {"t": [{"filter": "self_attn", "value": 0.3}]}}, r"merge.t=.*no rule without a filter"),
    ({"merge_method": "slerp", "base_model": "A", "models": [{"model": "A"}, {"model": "B"}]},
     r"slerp needs parameters.t"),
    ({"merge_method": "della", "base_model": "B", "models": [{"model": "X", "parameters": {"weight": 1}}],
      "parameters": {"density": 0.7, "epsilon": 0.3}}, r"merge.epsilon=0.3 with merge.density=0.7"),
    ({"merge_method": "ties", "base_model": "B", "models": [{"model": "X", "parameters": {"weight": 1}}],
      "parameters": {"normalize": [True, False]}}, r"parameters.normalize=.*use true or false"),
    ({"merge_method": "ties", "base_model": "B", "models": [{"model": "X", "parameters": {"weight": 1}}],
      "parameters": {"density": ["8e-1", "2e-1"]}}, r"parameters.density=.*gradient holding strings"),
    ({"merge_method": "ties", "base_model": "B", "models": [{"model": "C+L", "parameters": {"weight": 1}}]},
     r"models\[0\].model='C\+L': a LoRA applied to 'C', which is not base_model"),
    ({"merge_method": "linear", "base_model": "B", "models": [{"model": "X", "parameters": {"weight": 1}}]},
     r"model 'B' has no weight"),
])
def test_what_mergekit_refuses_is_refused_naming_the_key(doc, match, tmp_path):
    path = tmp_path / "mk.yml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match=match):
        standalone.run({"method": "ties", "from_mergekit": str(path), "output": str(tmp_path / "out")})
    assert not (tmp_path / "out").exists()


def test_yaml_string_numbers_and_density_above_one_are_accepted(tmp_path):
    """PyYAML reads ``8e-1`` as a string; mergekit takes it as 0.8. A density above 1 keeps everything in
    mergekit (mergekit/sparsify.py), as 1 does."""
    path = tmp_path / "mk.yml"
    path.write_text("merge_method: ties\nbase_model: B\nmodels:\n  - model: X\n    parameters: {weight: 1, "
                    "density: 8e-1}\n  - model: Y\n    parameters: {weight: 5e-1, density: 1.5}\n"
                    "parameters: {lambda: 2e0}\n")
    cfg = mergekit_to_merge_cfg(yaml.safe_load(path.read_text()))
    params = resolve_params(cfg, 2)
    assert params.densities == [0.8, 1.0] and params.weights == [1.0, 0.5] and params.lam == 2.0


def test_density_above_one_is_a_no_op(tiny_base, specialists, tmp_path):
    runs = {}
    for density in (1.5, 1.0):
        doc = {"merge_method": "dare_ties", "base_model": str(tiny_base),
               "models": [{"model": str(s), "parameters": {"weight": 0.5, "density": density}} for s in specialists]}
        (tmp_path / f"{density}.yml").write_text(yaml.safe_dump(doc))
        standalone.run({"method": "ties", "from_mergekit": str(tmp_path / f"{density}.yml"),
                        "output": str(tmp_path / str(density))})
        runs[density] = SafetensorsFolder(tmp_path / str(density))
    for name in runs[1.0].names():
        assert torch.equal(runs[1.5].get(name), runs[1.0].get(name))
    for f in runs.values():
        f.close()
    with pytest.raises(ValueError, match=r"1.2 above 1 in a gradient"):
        mergekit_to_merge_cfg({"merge_method": "ties", "base_model": "B", "parameters": {"density": [0.5, 1.2]},
                               "models": [{"model": "X", "parameters": {"weight": 1}}]})


def test_base_plus_adapter_is_the_adapter_folder():
    cfg = mergekit_to_merge_cfg({"merge_method": "ties", "base_model": "B",
                                 "models": [{"model": "B+ad/one", "parameters": {"weight": 1}},
                                            {"model": "X", "parameters": {"weight": 1}}]})
    assert cfg["models"] == ["ad/one", "X"]


def test_base_listed_among_models_is_dropped_from_task_vectors():
    """A base with parameters stayed as a zero task vector whose weight entered the normalisation."""
    cfg = mergekit_to_merge_cfg({"merge_method": "ties", "base_model": "B",
                                 "models": [{"model": "B", "parameters": {"weight": 1.0, "density": 0.5}},
                                            {"model": "X", "parameters": {"weight": 0.7}},
                                            {"model": "Y", "parameters": {"weight": 0.3}}]})
    assert cfg["models"] == ["X", "Y"] and cfg["weights"] == [0.7, 0.3]


def test_linear_with_a_base_model_averages_the_base_in(tiny_base, specialists, tmp_path):
    doc = {"merge_method": "linear", "base_model": str(tiny_base),
           "models": [{"model": str(s), "parameters": {"weight": w}} for s, w in zip(specialists, (1.0, 2.0), strict=True)],
           "parameters": {"weight": 1.0}}
    cfg = mergekit_to_merge_cfg(doc)
    assert cfg["models"] == [*(str(s) for s in specialists), str(tiny_base)] and cfg["weights"] == [1.0, 2.0, 1.0]
    (tmp_path / "mk.yml").write_text(yaml.safe_dump(doc))
    standalone.run({"method": "ties", "from_mergekit": str(tmp_path / "mk.yml"), "output": str(tmp_path / "out")})
    out, base = SafetensorsFolder(tmp_path / "out"), SafetensorsFolder(tiny_base)
    a, b = SafetensorsFolder(specialists[0]), SafetensorsFolder(specialists[1])
    name = "model.layers.0.mlp.up_proj.weight"
    torch.testing.assert_close(out.get(name), (a.get(name) + 2 * b.get(name) + base.get(name)) / 4,
                               rtol=0, atol=1e-6)
    for f in (out, base, a, b):
        f.close()


@pytest.mark.parametrize("method", ["ties", "task_arithmetic"])
def test_in_memory_merger_follows_layer_gradients(method, tiny_base, specialists, tmp_path):
    """The sweep's in-memory merger evaluates gradients per tensor as the streamed merge does (task
    arithmetic with a weight gradient is not one affine map for every tensor)."""
    from mixmerge.merge import InMemoryMerger, merge_folders

    cfg = mergekit_to_merge_cfg({"merge_method": method, "base_model": str(tiny_base),
                                 "models": [{"model": str(s)} for s in specialists],
                                 "parameters": {"weight": [0.2, 1.0], "density": [0.3, 0.9]}})
    params = resolve_params(cfg, 2)
    merge_folders(params, tiny_base, specialists, tmp_path / "out")
    streamed = SafetensorsFolder(tmp_path / "out")
    merger = InMemoryMerger(tiny_base, specialists)
    for name, merged, _ in merger.merged_tensors(params):
        torch.testing.assert_close(merged, streamed.get(name).float(), rtol=1e-6, atol=1e-7)
    streamed.close()


def test_out_dtype_is_the_output_dtype(tiny_base, specialists, tmp_path):
    """mergekit's ``dtype: float32`` + ``out_dtype: bfloat16``: computed in float32, written in bfloat16
    (out_dtype was refused as an unknown key, and dtype alone decided the output)."""
    doc = {"merge_method": "ties", "base_model": str(tiny_base), "dtype": "float32", "out_dtype": "bfloat16",
           "models": [{"model": str(s), "parameters": {"weight": 0.5, "density": 0.5}} for s in specialists]}
    (tmp_path / "mk.yml").write_text(yaml.safe_dump(doc))
    report = standalone.run({"method": "ties", "from_mergekit": str(tmp_path / "mk.yml"),
                             "output": str(tmp_path / "a")})
    assert report["parameters"]["out_dtype"] == "bfloat16"
    standalone.run({"method": "ties", "base": str(tiny_base), "models": [str(s) for s in specialists],
                    "weights": [0.5, 0.5], "density": 0.5, "dtype": "float32", "output": str(tmp_path / "b")})
    a, b = SafetensorsFolder(tmp_path / "a"), SafetensorsFolder(tmp_path / "b")
    name = "model.layers.0.mlp.up_proj.weight"
    assert a.get(name).dtype == torch.bfloat16 and b.get(name).dtype == torch.float32
    assert torch.equal(a.get(name), b.get(name).to(torch.bfloat16))
    assert json.loads((tmp_path / "a" / "config.json").read_text()).get("dtype", "bfloat16") == "bfloat16"
    a.close()
    b.close()
