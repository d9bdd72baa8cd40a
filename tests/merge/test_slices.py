"""mergekit ``slices`` / ``layer_range`` / ``passthrough`` (layer stacking), on tiny random Llamas."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from slice_models import make_llama  # noqa: E402

from mixmerge.merge.mergekit_yaml import mergekit_to_merge_cfg  # noqa: E402
from mixmerge.merge.slices import merge_layout  # noqa: E402
from mixmerge.merge.standalone import run as run_standalone  # noqa: E402


@pytest.fixture(scope="module")
def llamas(tmp_path_factory):
    root = tmp_path_factory.mktemp("llamas")
    return {name: make_llama(root / name, seed) for name, seed in (("base", 0), ("a", 1), ("b", 2))}


def _merge(doc, out):
    cfg = mergekit_to_merge_cfg(doc, "test.yml")
    return merge_layout(cfg["layout"], out)


def _w(path):
    return load_file(str(Path(path) / "model.safetensors"))


def test_passthrough_stacks_layers_renumbered(llamas, tmp_path):
    a, b = str(llamas["a"]), str(llamas["b"])
    doc = {"merge_method": "passthrough", "dtype": "float32",
           "slices": [{"sources": [{"model": a, "layer_range": [0, 2]}]},
                      {"sources": [{"model": b, "layer_range": [1, 4]}]}]}
    report = _merge(doc, tmp_path / "out")
    out, wa, wb = _w(tmp_path / "out"), _w(a), _w(b)
    assert report["n_layers"] == 5
    assert json.loads((tmp_path / "out" / "config.json").read_text())["num_hidden_layers"] == 5
    for k, (src, layer) in enumerate([(wa, 0), (wa, 1), (wb, 1), (wb, 2), (wb, 3)]):
        for suffix in ("self_attn.q_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight"):
            assert torch.equal(out[f"model.layers.{k}.{suffix}"], src[f"model.layers.{layer}.{suffix}"])
    assert not any("layers.5." in n for n in out)
    # mergekit/plan.py: embeddings from the first slice's model, final norm and lm_head from the last's
    assert torch.equal(out["model.embed_tokens.weight"], wa["model.embed_tokens.weight"])
    assert torch.equal(out["model.norm.weight"], wb["model.norm.weight"])
    assert torch.equal(out["lm_head.weight"], wb["lm_head.weight"])
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))
    assert len(model.model.layers) == 5


def test_passthrough_scale_with_filter(llamas, tmp_path):
    a = str(llamas["a"])
    doc = {"merge_method": "passthrough",
           "slices": [{"sources": [{"model": a, "layer_range": [2, 4],
                                    "parameters": {"scale": [{"filter": "o_proj", "value": 0.5}]}}]}]}
    _merge(doc, tmp_path / "out")
    out, wa = _w(tmp_path / "out"), _w(a)
    assert torch.allclose(out["model.layers.0.self_attn.o_proj.weight"], 0.5 * wa["model.layers.2.self_attn.o_proj.weight"])
    assert torch.equal(out["model.layers.1.self_attn.q_proj.weight"], wa["model.layers.3.self_attn.q_proj.weight"])


def test_slice_merges_its_sources_with_a_gradient_over_its_own_layers(llamas, tmp_path):
    """Linear over a slice: layer k of A's [0, 2) with layer k of B's [2, 4); A's weight a gradient [1, 0]
    evaluated at t = k / (n - 1) over the slice (mergekit/plan.py plan_slice)."""
    a, b = str(llamas["a"]), str(llamas["b"])
    doc = {"merge_method": "linear", "parameters": {"weight": 1.0},
           "slices": [{"sources": [{"model": a, "layer_range": [0, 2], "parameters": {"weight": [1.0, 0.0]}},
                                   {"model": b, "layer_range": [2, 4]}]},
                      {"sources": [{"model": a, "layer_range": [3, 4]},
                                   {"model": b, "layer_range": [0, 1]}], "parameters": {"weight": 3.0}}]}
    _merge(doc, tmp_path / "out")
    out, wa, wb = _w(tmp_path / "out"), _w(a), _w(b)
    n = "self_attn.k_proj.weight"
    assert torch.allclose(out[f"model.layers.0.{n}"], (wa[f"model.layers.0.{n}"] + wb[f"model.layers.2.{n}"]) / 2)
    assert torch.allclose(out[f"model.layers.1.{n}"], wb[f"model.layers.3.{n}"])
    # a one-layer slice: equal weights (the slice's 3.0 for both) -> the mean
    assert torch.allclose(out[f"model.layers.2.{n}"], (wa[f"model.layers.3.{n}"] + wb[f"model.layers.0.{n}"]) / 2)
    # outside the stack: t = 0, the first slice's parameters (weights 1 and 1)
    e = "model.embed_tokens.weight"
    assert torch.allclose(out[e], (wa[e] + wb[e]) / 2)


def test_task_arithmetic_slice_reads_the_base_at_its_own_range(llamas, tmp_path):
    base, a = str(llamas["base"]), str(llamas["a"])
    doc = {"merge_method": "task_arithmetic", "base_model": base,
           "slices": [{"sources": [{"model": base, "layer_range": [1, 3]},
                                   {"model": a, "layer_range": [0, 2], "parameters": {"weight": 0.5}}]}]}
    _merge(doc, tmp_path / "out")
    out, wbase, wa = _w(tmp_path / "out"), _w(base), _w(a)
    n = "mlp.up_proj.weight"
    for k in range(2):
        b_k, a_k = wbase[f"model.layers.{k + 1}.{n}"], wa[f"model.layers.{k}.{n}"]
        assert torch.allclose(out[f"model.layers.{k}.{n}"], b_k + 0.5 * (a_k - b_k), atol=1e-6)


def test_models_with_passthrough_is_the_one_model(llamas, tmp_path):
    a = str(llamas["a"])
    _merge({"merge_method": "passthrough", "models": [{"model": a}], "chat_template": "chatml"}, tmp_path / "out")
    out, wa = _w(tmp_path / "out"), _w(a)
    assert out.keys() == wa.keys() and all(torch.equal(out[k], wa[k]) for k in wa)


@pytest.mark.parametrize(("doc", "message"), [
    ({"merge_method": "passthrough", "slices": [{"sources": [{"model": "A", "layer_range": [0, 2]},
                                                             {"model": "B", "layer_range": [0, 2]}]}]},
     "passthrough takes exactly one source"),
    ({"merge_method": "linear", "slices": [{"sources": [{"model": "A", "layer_range": [0, 2]},
                                                        {"model": "B", "layer_range": [0, 3]}]}]},
     "different numbers of layers"),
    ({"merge_method": "ties", "base_model": "C", "slices": [{"sources": [
        {"model": "A", "layer_range": [0, 2], "parameters": {"weight": 1}}]}]},
     "base_model 'C' is not among the sources"),
    ({"merge_method": "passthrough", "slices": [{"sources": [{"model": "A", "layer_range": [0, 2]}],
                                                 "paramters": {}}]}, "did you mean 'parameters'"),
    ({"merge_method": "passthrough", "slices": [{"sources": [{"model": "A", "layer_range": [2]}]}]},
     "layer_range=[2]"),
    ({"merge_method": "passthrough", "models": [{"model": "A"}],
      "slices": [{"sources": [{"model": "A", "layer_range": [0, 1]}]}]}, "exactly one of 'models' and 'slices'"),
    ({"merge_method": "passthrough", "models": [{"model": "A"}], "tokenizer": {"source": "union", "tokens": {
        "<x>": {"source": {"kind": "model_token", "model": "A"}}}}}, "names a model and one of token_id, token"),
    ({"merge_method": "passthrough", "models": [{"model": "A"}], "tokenizer": {"pad_to_multiple_of": 0}},
     "pad_to_multiple_of=0"),
    ({"merge_method": "passthrough", "models": [{"model": "A"}], "chat_template": "nonsense"},
     "chat_template='nonsense'"),
    ({"merge_method": "passthrough", "models": [{"model": "A"}], "tokenizer_source": "base",
      "tokenizer": {"source": "base"}}, "not both"),
    ({"merge_method": "arcee_fusion", "slices": [{"sources": [{"model": "A", "layer_range": [0, 1]}]}]},
     "merge_method='arcee_fusion' is not supported"),
    ({"merge_method": "ties", "modules": {"decoder": {}}}, "'modules' is not supported"),
])
def test_refused_before_any_work_naming_the_key(doc, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        mergekit_to_merge_cfg(doc, "test.yml")


def test_layer_range_past_the_end_leaves_no_output(llamas, tmp_path):
    a = str(llamas["a"])
    f = tmp_path / "cfg.yml"
    f.write_text(yaml.safe_dump({"merge_method": "passthrough",
                                 "slices": [{"sources": [{"model": a, "layer_range": [2, 6]}]}]}))
    with pytest.raises(ValueError, match=r"layer_range \[2, 6\].*past its 4 layers"):
        run_standalone({"from_mergekit": str(f), "output": str(tmp_path / "out"), "method": "linear"})
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["cfg.yml"]


def test_standalone_runs_a_slices_yaml(llamas, tmp_path):
    a, b = str(llamas["a"]), str(llamas["b"])
    f = tmp_path / "cfg.yml"
    f.write_text(yaml.safe_dump({"merge_method": "passthrough", "out_dtype": "bfloat16", "slices": [
        {"sources": [{"model": a, "layer_range": [0, 1]}]}, {"sources": [{"model": b, "layer_range": [0, 1]}]}]}))
    report = run_standalone({"from_mergekit": str(f), "output": str(tmp_path / "out"), "method": "ties"})
    assert report["n_layers"] == 2
    out = _w(tmp_path / "out")
    assert out["model.layers.1.mlp.up_proj.weight"].dtype == torch.bfloat16
    assert torch.equal(out["model.layers.1.mlp.up_proj.weight"],
                       _w(b)["model.layers.0.mlp.up_proj.weight"].to(torch.bfloat16))
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
