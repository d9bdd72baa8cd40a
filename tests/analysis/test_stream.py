import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mixmerge.analysis import stream
from mixmerge.analysis.stream import ALL, analyze_models
from mixmerge.merge.deltas import cosine, pearson, sign_conflict_rate

PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")


def _attn(layer: int, proj: str) -> str:
    return f"model.layers.{layer}.self_attn.{proj}.weight"


@pytest.fixture(scope="module")
def variants(tiny_base, tmp_path_factory, make_variant, make_correlated):
    """Two 'specialists': uncorrelated deltas in layer 0, strongly correlated (r≈0.9) ones in layer 1."""

    state = load_file(str(tiny_base / "model.safetensors"))
    da, db = {}, {}
    for i, proj in enumerate(PROJ):
        for layer, rho in ((0, 0.0), (1, 0.9)):
            name = _attn(layer, proj)
            da[name], db[name] = make_correlated(state[name].shape, rho, seed=10 * layer + i)
    root = tmp_path_factory.mktemp("variants")
    a = make_variant(tiny_base, root / "a", da)
    b = make_variant(tiny_base, root / "b", db)
    return {"a": a, "b": b, "base_state": state}


def _stored_delta(folder, base_state, name):
    return load_file(str(folder / "model.safetensors"))[name].double() - base_state[name].double()


def _cat(folder, base_state, names):
    return torch.cat([_stored_delta(folder, base_state, n).reshape(-1) for n in names])


def test_norms_and_correlations_match_direct_computation(tiny_base, variants):
    result = analyze_models(tiny_base, {"a": variants["a"], "b": variants["b"]})
    assert result.pairs == [("a", "b")]
    assert result.num_layers == 2
    state = variants["base_state"]
    names1 = list(state)
    names1 = [n for n in names1 if n.startswith("model.layers.1.")]
    da1, db1 = _cat(variants["a"], state, names1), _cat(variants["b"], state, names1)
    assert result.norm("a", 1) == pytest.approx(float(da1.norm()), rel=1e-9)
    assert result.pair_stat(("a", "b"), 1) == pytest.approx(pearson(da1, db1), abs=1e-9)
    assert result.pair_stat(("a", "b"), 1, stat="cosine") == pytest.approx(cosine(da1, db1), abs=1e-9)
    assert result.pair_stat(("a", "b"), 1, stat="sign_conflict_rate") == pytest.approx(sign_conflict_rate(da1, db1))
    # the constructed correlations come back: ~0.9 in layer 1, ~0 in layer 0
    assert result.pair_stat(("a", "b"), 1) == pytest.approx(0.9, abs=0.03)
    assert abs(result.pair_stat(("a", "b"), 0)) < 0.05
    # one module of one layer
    q = _attn(0, "q_proj")
    dq = _stored_delta(variants["a"], state, q)
    assert result.norm("a", 0, "q_proj") == pytest.approx(float(dq.norm()), rel=1e-9)
    # untouched tensors have zero delta and undefined correlation
    assert result.norm("a", "embed", "embed") == 0.0
    assert result.norm("a", 0, "gate_proj") == 0.0
    assert math.isnan(result.pair_stat(("a", "b"), 0, "gate_proj"))
    # overall row equals the whole flattened task vector
    all_a, all_b = _cat(variants["a"], state, list(state)), _cat(variants["b"], state, list(state))
    assert result.norm("a") == pytest.approx(float(all_a.norm()), rel=1e-9)
    assert result.pair_stat(("a", "b")) == pytest.approx(
        float(np.corrcoef(all_a.numpy(), all_b.numpy())[0, 1]), abs=1e-9)
    # module-type row aggregates over layers
    dk = torch.cat([_stored_delta(variants["a"], state, _attn(i, "k_proj")).reshape(-1) for i in (0, 1)])
    assert result.norm("a", ALL, "k_proj") == pytest.approx(float(dk.norm()), rel=1e-9)
    rel = result.norm("a", 1, stat="rel_l2")
    base1 = torch.cat([state[n].double().reshape(-1) for n in names1])
    assert rel == pytest.approx(float(da1.norm()) / float(base1.norm()), rel=1e-9)


def test_identical_models_give_r_one(tiny_base, variants):
    result = analyze_models(tiny_base, {"a": variants["a"], "a2": variants["a"]})
    assert result.pair_stat(("a", "a2"), 0) == pytest.approx(1.0)
    assert result.pair_stat(("a", "a2"), 1, stat="sign_conflict_rate") == 0.0


def test_small_chunks_give_the_same_numbers(tiny_base, variants, monkeypatch):
    models = {"a": variants["a"], "b": variants["b"]}
    whole = analyze_models(tiny_base, models)
    monkeypatch.setattr(stream, "CHUNK_ELEMS", 1000)  # the embedding now streams in ~200 chunks
    chunked = analyze_models(tiny_base, models)
    for r1, r2 in zip(whole.pair_rows, chunked.pair_rows, strict=True):
        assert (r1["layer"], r1["module"]) == (r2["layer"], r2["module"])
        for key in ("pearson", "cosine", "sign_conflict_rate"):
            assert r1[key] == pytest.approx(r2[key], abs=1e-9, nan_ok=True)
    for r1, r2 in zip(whole.norm_rows, chunked.norm_rows, strict=True):
        assert r1["l2"] == pytest.approx(r2["l2"], rel=1e-9)


def test_sharded_folder_reads_like_a_single_file(tiny_base, variants, tmp_path):
    state = load_file(str(variants["a"] / "model.safetensors"))
    names = sorted(state)
    shard_dir = tmp_path / "sharded"
    shard_dir.mkdir()
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for fname, part in halves.items():
        save_file({n: state[n] for n in part}, str(shard_dir / fname))
        weight_map.update({n: fname for n in part})
    (shard_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    single = analyze_models(tiny_base, {"a": variants["a"], "b": variants["b"]})
    sharded = analyze_models(tiny_base, {"a": shard_dir, "b": variants["b"]})
    assert len(sharded.pair_rows) == len(single.pair_rows)
    for r1, r2 in zip(single.pair_rows, sharded.pair_rows, strict=True):
        assert r1["pearson"] == pytest.approx(r2["pearson"], abs=1e-12, nan_ok=True)
    assert sharded.norm("a", 1) == pytest.approx(single.norm("a", 1))


def test_untied_head_is_compared_to_the_base_embedding(tiny_base, variants, tmp_path, make_variant):
    state = variants["base_state"]
    embed = state["model.embed_tokens.weight"]
    head_delta = torch.full_like(embed, 0.001)
    untied = make_variant(tiny_base, tmp_path / "untied", {},
                           extra={"lm_head.weight": embed + head_delta})
    result = analyze_models(tiny_base, {"a": variants["a"], "untied": untied})
    assert any("untied" in n for n in result.notes)
    assert result.norm("untied", "head", "head") == pytest.approx(float(head_delta.double().norm()), rel=1e-4)
    assert result.norm("a", "head", "head") == 0.0  # tied model: its head is its (unchanged) embedding


def test_missing_tensor_and_shape_mismatch_are_clear_errors(tiny_base, variants, tmp_path):
    state = load_file(str(variants["a"] / "model.safetensors"))
    broken = tmp_path / "broken"
    broken.mkdir()
    save_file({k: v for k, v in state.items() if k != _attn(1, "q_proj")}, str(broken / "model.safetensors"))
    with pytest.raises(ValueError, match="no tensor 'model.layers.1.self_attn.q_proj.weight'"):
        analyze_models(tiny_base, {"broken": broken})
    resized = tmp_path / "resized"
    resized.mkdir()
    state["model.embed_tokens.weight"] = torch.zeros(10, 64)
    save_file(state, str(resized / "model.safetensors"))
    with pytest.raises(ValueError, match="shape"):
        analyze_models(tiny_base, {"resized": resized})
    with pytest.raises(ValueError, match="pair"):
        analyze_models(tiny_base, {"a": variants["a"]}, pairs=[("a", "nope")])
    with pytest.raises(FileNotFoundError, match="safetensors"):
        analyze_models(tiny_base, {"empty": tmp_path})
