"""Reading mergekit YAMLs and the standalone ``strategy=merge`` command."""

from __future__ import annotations

import pytest
import torch
import yaml

from mixmerge.merge import standalone
from mixmerge.merge.io import SafetensorsFolder
from mixmerge.merge.mergekit_yaml import mergekit_to_merge_cfg


def test_ties_config_translates():
    doc = {"merge_method": "ties", "base_model": "B", "dtype": "bfloat16",
           "models": [{"model": "B"},
                      {"model": "X", "parameters": {"weight": 0.7, "density": 0.4}},
                      {"model": "Y", "parameters": {"weight": 0.3, "density": 0.6}}],
           "parameters": {"normalize": False, "lambda": 1.2}}
    cfg = mergekit_to_merge_cfg(doc)
    assert cfg == {"method": "ties", "base": "B", "models": ["X", "Y"], "weights": [0.7, 0.3],
                   "density": [0.4, 0.6], "normalize": False, "lambda": 1.2, "dtype": "bfloat16"}


def test_slerp_uses_base_as_t0_endpoint():
    doc = {"merge_method": "slerp", "base_model": "A", "models": [{"model": "A"}, {"model": "B"}],
           "parameters": {"t": [{"filter": "self_attn", "value": [0, 1]}, {"value": 0.5}]}}
    cfg = mergekit_to_merge_cfg(doc)
    assert cfg["models"] == ["A", "B"] and cfg["t"][0]["filter"] == "self_attn"


def test_global_density_and_weight():
    cfg = mergekit_to_merge_cfg({"merge_method": "dare_ties", "base_model": "B",
                                 "models": [{"model": "X"}, {"model": "Y"}],
                                 "parameters": {"density": 0.3, "weight": 0.5}})
    assert cfg["weights"] == [0.5, 0.5] and cfg["density"] == [0.3, 0.3]


@pytest.mark.parametrize(("doc", "match"), [
    ({"merge_method": "ties", "slices": []}, "exactly one of 'models' and 'slices'"),
    ({"models": [{"model": "X"}]}, "no merge_method"),
    ({"merge_method": "ties", "modules": {"text_decoder": {}}}, "'modules' is not supported"),
])
def test_unsupported_configs(doc, match):
    with pytest.raises(ValueError, match=match):
        mergekit_to_merge_cfg(doc)


@pytest.mark.parametrize(("doc", "match"), [
    ({"merge_method": "ties", "base_model": "B", "models": [{"model": "X"}, {"model": "Y"}],
      "parameters": {"densty": 0.3}}, r"mk.yml: parameters.densty is not a known merge setting; did you mean 'density'"),
    ({"merge_method": "ties", "base_model": "B",
      "models": [{"model": "X", "parameters": {"weigth": 1}}, {"model": "Y"}]},
     r"models\[0\].parameters.weigth .*did you mean 'weight'"),
    ({"merge_method": "ties", "base_modle": "B", "models": [{"model": "X"}]}, r"base_modle .*did you mean 'base_model'"),
    ({"merge_method": "ties", "base_model": "B", "models": [{"modle": "X"}]}, r"models\[0\].modle .*did you mean 'model'"),
])
def test_unknown_keys_are_refused_with_the_close_match(doc, match, tmp_path):
    """A typo must not merge silently without it (``densty``: no trimming at all)."""
    path = tmp_path / "mk.yml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match=match):
        standalone.run({"method": "ties", "from_mergekit": str(path), "output": str(tmp_path / "out")})
    assert not (tmp_path / "out").exists()


def _state(folder):
    src = SafetensorsFolder(folder)
    out = {n: src.get(n).clone() for n in src.names()}
    src.close()
    return out


def test_standalone_from_mergekit_equals_direct(tiny_base, specialists, tmp_path):
    doc = {"merge_method": "ties", "base_model": str(tiny_base),
           "models": [{"model": str(specialists[0]), "parameters": {"weight": 0.6, "density": 0.5}},
                      {"model": str(specialists[1]), "parameters": {"weight": 0.4, "density": 0.5}}]}
    (tmp_path / "mk.yml").write_text(yaml.safe_dump(doc))
    # the method YAML's defaults (density 0.5 is the same; weight must not override the file's weights)
    report = standalone.run({"method": "linear", "weight": 0.5, "from_mergekit": str(tmp_path / "mk.yml"),
                             "output": str(tmp_path / "a")})
    assert report["method"] == "ties" and report["parameters"]["weights"] == [0.6, 0.4]
    standalone.run({"method": "ties", "base": str(tiny_base), "models": [str(s) for s in specialists],
                    "weights": [0.6, 0.4], "density": 0.5, "output": str(tmp_path / "b")})
    a, b = _state(tmp_path / "a"), _state(tmp_path / "b")
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_standalone_needs_models_and_output(tmp_path):
    with pytest.raises(ValueError, match=r"merge.models"):
        standalone.run({"method": "ties", "output": str(tmp_path)})
    with pytest.raises(ValueError, match=r"merge.output"):
        standalone.run({"method": "ties", "models": ["a"]})
