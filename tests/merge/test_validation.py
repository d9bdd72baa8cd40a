"""Every validation error: config ranges and counts, and bad inputs, each naming what is wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mixmerge.merge import merge_folders, resolve_weights, validate_merge_config

# ---------------------------------------------------------------- config


def test_resolve_weights():
    assert resolve_weights({"weight": 0.7}, 2) == pytest.approx([0.7, 0.3])
    assert resolve_weights({}, 2) == [0.5, 0.5]
    assert resolve_weights({"weights": [1, 2, 3]}, 3) == [1.0, 2.0, 3.0]
    assert resolve_weights({"weight": 0.4}, 3) == [0.4, 0.4, 0.4]
    assert resolve_weights({"weight": 1.0}, 1) == [1.0]


@pytest.mark.parametrize(("cfg", "n", "match"), [
    ({"method": "ties", "weights": [0.5, 0.5, 0.1]}, 2, r"merge.weights has 3 values but there are 2 models"),
    ({"method": "ties", "weight": 1.4}, 2, r"merge.weight=1.4 is outside \[0, 1\]"),
    ({"method": "ties", "density": 1.3}, 2, r"merge.density=1.3 .* is outside \(0, 1\]"),
    ({"method": "ties", "density": 0.0}, 2, r"merge.density=0.0 .* is outside \(0, 1\]"),
    ({"method": "ties", "density": [0.5, 0.5, 0.5]}, 2, r"merge.density has 3 values"),
    ({"method": "della", "density": 0.5, "epsilon": 0.6}, 2, r"merge.epsilon=0.6 with merge.density=0.5"),
    ({"method": "della", "density": 0.5, "epsilon": -0.1}, 2, r"merge.epsilon=-0.1 .* is negative"),
    ({"method": "breadcrumbs", "gamma": 1.0}, 2, r"merge.gamma=1.0 .* is outside \[0, 1\)"),
    ({"method": "nope"}, 2, r"merge.method='nope' is not a known merge method"),
    ({"weight": 0.5}, 2, r"merge.method is missing"),
    ({"method": "slerp"}, 3, r"merge.method=slerp merges exactly 2 models"),
    ({"method": "model_stock"}, 1, r"needs at least 2 specialist models"),
    ({"method": "ties", "lambda": float("nan")}, 2, r"merge.lambda=nan is not a finite number"),
    ({"method": "ties", "rescale_mode": "l7"}, 2, r"merge.rescale_mode='l7'"),
    ({"method": "ties", "dtype": "int8"}, 2, r"merge.dtype='int8'"),
    ({"method": "slerp", "t": 1.5}, 2, r"merge.t=1.5: every t must be a number in \[0, 1\]"),
    ({"method": "ties", "normalize": "yes"}, 2, r"merge.normalize='yes'"),
    ({"method": "fisher", "fisher_paths": ["a"]}, 2, r"merge.fisher_paths has 1 folders but there are 2 models"),
    ({"method": "ties", "weight": [0.2, 0.8]}, 2, r"merge.weight=\[0.2, 0.8\] is a list; use merge.weights"),
], ids=lambda x: x if isinstance(x, str) else None)
def test_config_errors_name_the_field(cfg, n, match):
    with pytest.raises(ValueError, match=match):
        validate_merge_config(cfg, n)


def test_every_method_with_defaults_is_valid():
    from mixmerge.merge import ALIASES, METHODS

    required = {"nearswap": {"t": 1e-4}}  # mergekit requires NearSwap's t: no default exists
    for name in [*METHODS, *ALIASES]:
        validate_merge_config({"method": name, **required.get(name, {})}, 2)


# ---------------------------------------------------------------- inputs


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_weights(folder: Path, fn) -> None:
    path = folder / "model.safetensors"
    state = load_file(str(path))
    fn(state)
    save_file(state, str(path), metadata={"format": "pt"})


def _edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def _merge(base, models, tmp_path, **cfg):
    return merge_folders({"method": "ties", "density": 0.5, **cfg}, base, models, tmp_path / "out")


def test_different_architecture(tiny_base, specialists, tmp_path):
    bad = _copy(specialists[1], tmp_path / "bad")
    _edit_config(bad, num_hidden_layers=3)
    with pytest.raises(ValueError, match=r"different architectures: .*bad has num_hidden_layers=3"):
        _merge(tiny_base, [specialists[0], bad], tmp_path)
    assert not (tmp_path / "out").exists()


def test_shape_mismatch_names_the_tensor(tiny_base, specialists, tmp_path):
    bad = _copy(specialists[1], tmp_path / "bad")
    name = "model.layers.0.mlp.up_proj.weight"
    _edit_weights(bad, lambda s: s.__setitem__(name, torch.zeros(64, 64)))
    with pytest.raises(ValueError, match=rf"shape mismatch: tensor '{name}' is \(64, 64\)"):
        _merge(tiny_base, [specialists[0], bad], tmp_path)


def test_vocab_size_mismatch_refused_unless_truncate(tiny_base, specialists, tmp_path):
    bad = _copy(specialists[1], tmp_path / "bad")
    _edit_weights(bad, lambda s: s.__setitem__("model.embed_tokens.weight", s["model.embed_tokens.weight"][:-8].clone()))
    vocab = json.loads((tiny_base / "config.json").read_text())["vocab_size"]
    _edit_config(bad, vocab_size=vocab - 8)
    with pytest.raises(ValueError, match=r"different vocabulary sizes: .* vocab_size=.*vocab_policy=truncate"):
        _merge(tiny_base, [specialists[0], bad], tmp_path)
    report = _merge(tiny_base, [specialists[0], bad], tmp_path, vocab_policy="truncate")
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert out["model.embed_tokens.weight"].shape[0] == vocab - 8
    assert json.loads((tmp_path / "out" / "config.json").read_text())["vocab_size"] == vocab - 8
    assert report["parameters"]["vocab_policy"] == "truncate"


def test_tokenizer_mismatch(tiny_base, specialists, tmp_path):
    bad = _copy(specialists[1], tmp_path / "bad")
    tok = json.loads((bad / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    first = next(iter(vocab))
    vocab[first + "_x"] = vocab.pop(first)
    (bad / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(ValueError, match=r"different tokenizers: .*bad/tokenizer.json"):
        _merge(tiny_base, [specialists[0], bad], tmp_path)


def test_missing_tensor(tiny_base, specialists, tmp_path):
    bad = _copy(specialists[1], tmp_path / "bad")
    _edit_weights(bad, lambda s: s.pop("model.layers.1.post_attention_layernorm.weight"))
    with pytest.raises(ValueError, match=r"missing tensor: model 1 .* has no 'model.layers.1.post_attention_layernorm"):
        _merge(tiny_base, [specialists[0], bad], tmp_path)


@pytest.mark.parametrize(("keep", "message"), [(4, "is not a readable safetensors file"), (-1000, "is truncated")])
def test_broken_weights_file_is_refused_before_any_work(keep, message, tiny_base, specialists, tmp_path):
    bad = _copy(specialists[1], tmp_path / "bad")
    weights = bad / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:keep])
    with pytest.raises(ValueError, match=rf"bad/model.safetensors {message}.*re-save or re-download it"):
        _merge(tiny_base, [specialists[0], bad], tmp_path)
    assert not list(tmp_path.glob("*out*"))


@pytest.mark.parametrize("method", ["ties", "linear"])  # the fused and the generic path
def test_unsupported_tensor_dtype_names_the_tensor(method, tiny_base, specialists, tmp_path):
    """Tensors are read in place (memory-mapped) now; an unknown dtype is still a clear error, and no
    output folder is left behind."""
    folders = [_copy(src, tmp_path / name) for src, name in
               [(tiny_base, "base"), (specialists[0], "a"), (specialists[1], "b")]]
    for folder in folders:
        _edit_weights(folder, lambda s: s.update({"extra.counts": torch.zeros(4, dtype=torch.uint16)}))
    with pytest.raises(ValueError, match=r"tensor 'extra.counts' has unsupported dtype U16"):
        _merge(folders[0], folders[1:], tmp_path, method=method, weight=1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "base"]


@pytest.mark.parametrize("method", ["ties", "linear", "task_arithmetic"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_input(value, method, tiny_base, specialists, tmp_path):
    bad = _copy(specialists[1], tmp_path / "bad")
    name = "model.layers.1.self_attn.o_proj.weight"

    def poison(s):
        s[name][3, 5] = value

    _edit_weights(bad, poison)
    with pytest.raises(ValueError, match=rf"NaN/Inf in input: tensor '{name}' of model 1"):
        _merge(tiny_base, [specialists[0], bad], tmp_path, method=method, weight=1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]  # nothing half-written is left


def test_base_that_is_not_the_specialists_base(tiny_base, specialists, tmp_path):
    other = _copy(tiny_base, tmp_path / "other_base")
    gen = torch.Generator().manual_seed(9)

    def reinit(s):
        for k, t in s.items():
            if t.dim() == 2:
                s[k] = torch.randn(t.shape, generator=gen) * t.std()

    _edit_weights(other, reinit)
    with pytest.raises(ValueError, match=r"merge.base does not look like the base of model 0 .* differs by"):
        _merge(other, specialists, tmp_path)


def test_weights_count_and_density_checked_before_reading(tiny_base, specialists, tmp_path):
    with pytest.raises(ValueError, match=r"merge.weights has 3 values but there are 2 models"):
        _merge(tiny_base, specialists, tmp_path, weights=[1, 1, 1])
    with pytest.raises(ValueError, match=r"merge.density=1.5"):
        _merge(tiny_base, specialists, tmp_path, density=1.5)


def test_fisher_needs_paths(tiny_base, specialists, tmp_path):
    with pytest.raises(ValueError, match=r"merge.fisher_paths"):
        merge_folders({"method": "fisher"}, tiny_base, specialists, tmp_path / "out")


def test_validate_without_model_count_and_omegaconf():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"method": "ties", "weights": [0.2, 0.3, 0.5], "density": [0.5, 0.6, 0.7],
                            "t": None, "models": None, "from_mergekit": None})
    validate_merge_config(cfg, None)
    validate_merge_config(OmegaConf.create({"method": "slerp", "t": [{"filter": "mlp", "value": [0, 1]},
                                                                      {"value": 0.3}]}), None)
    with pytest.raises(ValueError, match=r"merge.density=1.5"):
        validate_merge_config(OmegaConf.create({"method": "della", "density": 1.5}), None)
    with pytest.raises(ValueError, match=r"merge.weights has 2 values but there are 3 models"):
        validate_merge_config({"method": "ties", "models": ["a", "b", "c"], "weights": [1, 1]}, None)


def test_validate_reads_mergekit_file(tmp_path):
    (tmp_path / "mk.yml").write_text("merge_method: ties\nbase_model: B\nmodels:\n"
                                     "  - model: X\n    parameters: {weight: 1, density: -1.7}\n"
                                     "  - model: Y\n    parameters: {weight: 1, density: 0.5}\n")
    with pytest.raises(ValueError, match=r"merge.density=-1.7"):
        validate_merge_config({"method": "linear", "from_mergekit": str(tmp_path / "mk.yml")}, None)


def test_unknown_keys_and_bad_shard_size_are_refused_before_any_work():
    from omegaconf import OmegaConf

    with pytest.raises(ValueError, match=r"merge.desnity is not a known merge setting; did you mean 'density'"):
        validate_merge_config(OmegaConf.create({"method": "ties", "desnity": 0.3}), None)
    with pytest.raises(ValueError, match=r"merge.lamda .*did you mean 'lambda'"):
        validate_merge_config({"method": "ties", "lamda": 0.3}, 2)
    for bad in (0, -1, "big"):
        with pytest.raises(ValueError, match=r"merge.shard_size_mb=.* must be a positive number"):
            validate_merge_config({"method": "ties", "shard_size_mb": bad}, 2)
    validate_merge_config({"method": "ties", "shard_size_mb": 0.5, "overwrite": True, "output": "o"}, 2)
