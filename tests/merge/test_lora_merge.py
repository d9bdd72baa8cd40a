"""Exact LoRA-native merging (merge.output_format=adapter): ΔW merged per module, written back as a peft adapter.

The reference is the full-weight merge of the expanded models (base + s B A saved as full folders) by the
same method and parameters; the tiny Llama-like base of the test session, adapters built here with peft.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mixmerge.merge import merge_folders
from mixmerge.merge.io import SafetensorsFolder
from tests.merge.conftest import make_lora_adapter

# float32 factors from a float64 SVD: B'A' reproduces ΔW to float32 rounding; base + ΔW is then compared
# with base + ΔW computed by the full-weight engine from base + s B A − base (another rounding of base).
RTOL, ATOL = 1e-5, 2e-6


def _state(folder: Path) -> dict[str, torch.Tensor]:
    with SafetensorsFolder(folder) as src:
        return {n: src.get(n).clone() for n in src.names()}


def _expand(base: Path, adapter: Path, out: Path) -> Path:
    """The adapter as a full model folder (base + s B A), written by the full-weight engine."""
    merge_folders({"method": "task_arithmetic", "weights": [1.0]}, base, [adapter], out)
    return out


@pytest.fixture(scope="module")
def adapters(tiny_base, tmp_path_factory) -> dict[str, Path]:
    """Three adapters: different ranks and alphas, and different target modules (a, c: q+v; b: q+k+o); a and c
    share r (peft's add_weighted_adapter "ties" needs it)."""
    root = tmp_path_factory.mktemp("lora_specs")
    return {
        "a": make_lora_adapter(tiny_base, root / "a", r=4, alpha=8, targets=["q_proj", "v_proj"], seed=1),
        "b": make_lora_adapter(tiny_base, root / "b", r=8, alpha=8, targets=["q_proj", "k_proj", "o_proj"], seed=2),
        "c": make_lora_adapter(tiny_base, root / "c", r=4, alpha=4, targets=["q_proj", "v_proj"], seed=3),
    }


@pytest.fixture(scope="module")
def expanded(tiny_base, adapters, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lora_expanded")
    return {k: _expand(tiny_base, p, root / k) for k, p in adapters.items()}


CASES = {
    "linear": {"method": "linear", "weights": [0.7, 0.3]},
    "task_arithmetic": {"method": "task_arithmetic", "weights": [1.0, 0.8], "lambda": 0.9},
    "ties": {"method": "ties", "weights": [1.0, 0.6], "density": 0.4},
    "dare_ties": {"method": "dare_ties", "weights": [1.0, 0.6], "density": 0.5, "seed": 5},
    "dare_linear": {"method": "dare_linear", "weights": [0.5, 0.5], "density": 0.3, "seed": 11},
}


def test_pure_math_factored_svd_and_linear_coefficients():
    """The SVD from the factors equals the dense one; task arithmetic is Σ c_i ΔW_i; the split is exact at
    full rank and Eckart–Young optimal below it (milliseconds, no files)."""
    from mixmerge.merge.lora_merge import (
        factored_svd,
        linear_coefficients,
        lora_delta,
        merge_deltas,
        total_relative_error,
        truncated_factors,
    )
    from mixmerge.merge.params import resolve_params

    gen = torch.Generator().manual_seed(0)
    bs = [torch.randn(50, r, generator=gen) for r in (2, 4)]
    as_ = [torch.randn(r, 40, generator=gen) for r in (2, 4)]
    params = resolve_params({"method": "task_arithmetic", "weights": [0.7, 0.5], "lambda": 0.8,
                             "normalize": True}, 2)
    coefficients = linear_coefficients(params)
    assert coefficients == pytest.approx([0.8 * 0.7 / 1.2, 0.8 * 0.5 / 1.2])
    deltas = [lora_delta(a, b, 2.0) for a, b in zip(as_, bs, strict=True)]
    merged = merge_deltas("m.weight", deltas, params)
    torch.testing.assert_close(merged, coefficients[0] * deltas[0] + coefficients[1] * deltas[1])
    left = torch.cat([b * (c * 2.0) for b, c in zip(bs, coefficients, strict=True)], dim=1)
    right = torch.cat(as_, dim=0)
    u, s, vh = factored_svd(left, right)
    torch.testing.assert_close(s, torch.linalg.svdvals(merged.double())[:6], rtol=1e-5, atol=1e-6)  # rank 2 + 4
    torch.testing.assert_close((u * s) @ vh, merged.double(), rtol=1e-5, atol=1e-5)
    for rank in (3, 6):
        dense, fast = truncated_factors(merged, rank), truncated_factors(merged, rank, low_rank=(left, right))
        assert dense.rank == fast.rank == rank
        assert fast.error_norm == pytest.approx(dense.error_norm, rel=1e-4, abs=1e-4)
    assert truncated_factors(merged, 6).relative_error < 1e-6  # rank 6 = 2 + 4: exact
    best3 = truncated_factors(merged, 3)
    sv = torch.linalg.svdvals(merged.double())
    assert best3.relative_error == pytest.approx((sv[3:].norm() / sv.norm()).item(), rel=1e-5)
    assert truncated_factors(merged, 100).rank == 40  # capped at min(out, in)
    assert total_relative_error([best3, best3]) == pytest.approx(best3.relative_error)
    with pytest.raises(ValueError, match="ties is not a linear combination"):
        linear_coefficients(resolve_params({"method": "ties"}, 2))


@pytest.mark.parametrize("case", list(CASES))
def test_full_rank_adapter_equals_full_weight_merge(case, tiny_base, adapters, expanded, tmp_path):
    """Adapters a (r=4; q, v) and b (r=8; q, k, o): the union of modules, ΔW = 0 where one does not touch it."""
    from peft import PeftModel

    from mixmerge.models import load_model

    cfg = CASES[case]
    full = _state(merge_folders(cfg, tiny_base, [expanded["a"], expanded["b"]], tmp_path / "full")["output"])
    report = merge_folders({**cfg, "output_format": "adapter"}, tiny_base, [adapters["a"], adapters["b"]],
                           tmp_path / "lora")
    assert report["relative_error"] < 1e-6  # adapter_rank null: each module's exact rank
    assert report["n_modules"] == 2 * 4  # 2 layers x (q, k, v, o)
    elementwise = cfg["method"] not in ("linear", "task_arithmetic")
    base = _state(tiny_base)
    for module, row in report["per_module"].items():  # rank: sum of the inputs' ranks, or full after TIES/DARE
        full_rank = min(base[f"{module}.weight"].shape)  # q, o: 64 x 64; k, v: 32 x 64 (grouped-query attention)
        assert row["rank"] == (full_rank if elementwise else min(full_rank, sum(row["input_ranks"]))), module
    merged = PeftModel.from_pretrained(load_model(tiny_base), str(tmp_path / "lora")).merge_and_unload()
    state = merged.state_dict()
    changed = 0
    for name, want in full.items():
        torch.testing.assert_close(state[name], want, rtol=RTOL, atol=ATOL, msg=lambda m, n=name: f"{n}: {m}")
        changed += int(not torch.equal(want, base[name]))
    assert changed == 8  # the adapted modules, and nothing else


def test_low_rank_error_is_reported_and_recomputes(tiny_base, adapters, expanded, tmp_path):
    cfg = {"method": "ties", "weights": [1.0, 1.0], "density": 0.5}
    full = _state(merge_folders(cfg, tiny_base, [expanded["a"], expanded["b"]], tmp_path / "full")["output"])
    base = _state(tiny_base)
    out = tmp_path / "r3"
    report = merge_folders({**cfg, "output_format": "adapter", "adapter_rank": 3}, tiny_base,
                           [adapters["a"], adapters["b"]], out)
    on_disk = json.loads((out / "merge_report.json").read_text())
    assert on_disk["relative_error"] == pytest.approx(report["relative_error"])
    factors = load_file(str(out / "adapter_model.safetensors"))
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 3 and not config["rank_pattern"]
    num = den = 0.0
    for module, row in report["per_module"].items():
        key = f"base_model.model.{module}"
        b, a = factors[f"{key}.lora_B.weight"], factors[f"{key}.lora_A.weight"]
        assert a.shape[0] == b.shape[1] == row["rank"] == 3
        delta = (full[f"{module}.weight"] - base[f"{module}.weight"]).double()
        err = torch.linalg.matrix_norm(delta - b.double() @ a.double()).item()
        rel = err / torch.linalg.matrix_norm(delta).item()
        assert row["relative_error"] == pytest.approx(rel, rel=1e-3), module
        # Eckart–Young: the best rank-3 error is the norm of the dropped singular values
        s = torch.linalg.svdvals(delta)
        assert rel == pytest.approx((s[3:].norm() / s.norm()).item(), rel=1e-3)
        assert 0.2 < rel < 1  # TIES on ΔW is full rank: rank 3 of 64 loses a lot, and says so
        num += err ** 2
        den += torch.linalg.matrix_norm(delta).item() ** 2
    assert report["relative_error"] == pytest.approx((num / den) ** 0.5, rel=1e-3)


def test_factor_split_is_balanced(tiny_base, adapters, tmp_path):
    """B' = U sqrt(S), A' = sqrt(S) V^T: B'^T B' = A' A'^T = S (both factors carry the same scale)."""
    out = tmp_path / "o"
    report = merge_folders({"method": "task_arithmetic", "weights": [1.0, 1.0], "output_format": "adapter",
                            "adapter_rank": 4}, tiny_base, [adapters["a"], adapters["c"]], out)
    factors = load_file(str(out / "adapter_model.safetensors"))
    module = next(iter(report["per_module"]))
    b = factors[f"base_model.model.{module}.lora_B.weight"].double()
    a = factors[f"base_model.model.{module}.lora_A.weight"].double()
    torch.testing.assert_close(b.T @ b, a @ a.T, rtol=1e-5, atol=1e-8)
    # a (r=4) + c (r=4) on the same modules: rank 8 at most, so rank 4 truncates and rank 8 would not
    assert all(row["rank"] == 4 for row in report["per_module"].values())
    exact = merge_folders({"method": "task_arithmetic", "weights": [1.0, 1.0], "output_format": "adapter"},
                          tiny_base, [adapters["a"], adapters["c"]], tmp_path / "exact")
    assert all(row["rank"] == 8 for row in exact["per_module"].values()) and exact["relative_error"] < 1e-6


def test_exact_ties_matches_peft_ties_svd_but_not_peft_ties(tiny_base, adapters):
    """Why this exists: peft's add_weighted_adapter "ties" trims and elects signs on A and B separately,
    which is not TIES on ΔW = B A (peft issue 3004); its "ties_svd" works on ΔW and, with unit weights
    (it elects signs before weighting and averages over a count), equals the exact merge here."""
    from peft import PeftModel

    from mixmerge.merge.lora_merge import lora_delta, merge_deltas
    from mixmerge.merge.params import resolve_params
    from mixmerge.models import load_model

    model = PeftModel.from_pretrained(load_model(tiny_base), str(adapters["a"]), adapter_name="a")
    model.load_adapter(str(adapters["c"]), adapter_name="c")
    model.add_weighted_adapter(["a", "c"], [1.0, 1.0], "factorwise", combination_type="ties", density=0.5)
    model.add_weighted_adapter(["a", "c"], [1.0, 1.0], "on_delta", combination_type="ties_svd", density=0.5,
                               svd_rank=64)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    params = resolve_params({"method": "ties", "weights": [1.0, 1.0], "density": 0.5}, 2)
    deltas = [lora_delta(layer.lora_A[k].weight, layer.lora_B[k].weight, layer.scaling[k]) for k in ("a", "c")]
    exact = merge_deltas("model.layers.0.self_attn.q_proj.weight", deltas, params)
    with torch.no_grad():
        on_delta, factorwise = layer.get_delta_weight("on_delta"), layer.get_delta_weight("factorwise")
    torch.testing.assert_close(on_delta, exact, rtol=1e-4, atol=1e-6)
    assert (factorwise - exact).norm() > 0.3 * exact.norm()


def test_standalone_command_writes_an_adapter(tiny_base, adapters, tmp_path):
    from mixmerge.merge.standalone import run

    out = tmp_path / "cli"
    report = run({"method": "ties", "base": str(tiny_base), "models": [str(adapters["a"]), str(adapters["b"])],
                  "output": str(out), "density": 0.5, "output_format": "adapter", "adapter_rank": 8})
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                     "merge_report.json"]
    assert report["parameters"]["adapter_rank"] == 8 and 0 < report["relative_error"] < 1


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _refused(tiny_base, models, tmp_path, match, cfg=None):
    out = tmp_path / "refused"
    with pytest.raises(ValueError, match=match):
        merge_folders({"method": "ties", "output_format": "adapter", **(cfg or {})}, tiny_base, models, out)
    assert not out.exists() and not list(tmp_path.glob(".refused.*"))


def test_mismatched_adapters_are_refused_before_any_work(tiny_base, adapters, expanded, tmp_path):
    a, b = adapters["a"], adapters["b"]
    # another base, by name
    other = _copy(b, tmp_path / "other_base")
    cfg = json.loads((other / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "someone/another-model"
    (other / "adapter_config.json").write_text(json.dumps(cfg))
    _refused(tiny_base, [a, other], tmp_path, r"merge.models\[0\] was trained on .* but merge.models\[1\] on "
                                              r"'someone/another-model'")
    # another base, by shape: A's input size does not fit
    wrong = _copy(b, tmp_path / "wrong_shape")
    state = load_file(str(wrong / "adapter_model.safetensors"))
    key = next(k for k in state if "lora_A" in k)
    state[key] = torch.zeros(state[key].shape[0], 32)
    save_file(state, str(wrong / "adapter_model.safetensors"))
    _refused(tiny_base, [a, wrong], tmp_path, r"merge.models\[1\].*A \(8, 32\)\) do not fit the base's \(32, 64\)")
    # a whole tensor (modules_to_save)
    whole = _copy(b, tmp_path / "whole")
    state = load_file(str(whole / "adapter_model.safetensors"))
    state["base_model.model.model.norm.weight"] = torch.ones(64)
    save_file(state, str(whole / "adapter_model.safetensors"))
    _refused(tiny_base, [whole, a], tmp_path, r"merge.models\[0\].*saves whole tensors \(model.norm.weight")
    # a full model among the adapters
    _refused(tiny_base, [a, expanded["b"]], tmp_path, r"merge.models\[1\]=.* is not.*merge.output_format=model")
    # methods that are not functions of the task vectors
    _refused(tiny_base, [a, b], tmp_path, r"slerp combines whole weights", {"method": "slerp"})
    _refused(tiny_base, [a, b], tmp_path, r"merge.normalize=true",
             {"method": "linear", "normalize": False, "weights": [1.0, 1.0]})
    with pytest.raises(ValueError, match="adapter_rank=4 only applies to merge.output_format=adapter"):
        merge_folders({"method": "ties", "adapter_rank": 4}, tiny_base, [a, b], tmp_path / "x")


def test_config_keys_validate_and_keep_cache_keys():
    """merge.output_format/adapter_rank compose from the command line; the pipeline (which evaluates a merged
    model) refuses an adapter output before any work; at their defaults they leave merge cache keys unchanged."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from mixmerge.config import ConfigError, validate_config
    from mixmerge.stages import merge_config_for_key
    from tests.conftest import REPO

    def composed(overrides):
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            return OmegaConf.to_container(compose("config", overrides=overrides), resolve=True)

    validate_config(composed(["strategy=merge", "merge=ties", "merge.base=/b", "merge.models=[/x,/y]",
                              "merge.output=/o", "merge.output_format=adapter", "merge.adapter_rank=16"]))
    with pytest.raises(ValueError, match="merge.output_format=adapter: merge.method=slerp combines whole weights"):
        validate_config(composed(["strategy=merge", "merge=slerp", "merge.base=/b", "merge.models=[/x,/y]",
                                  "merge.output=/o", "merge.output_format=adapter"]))
    with pytest.raises(ConfigError, match="merge.output_format=adapter writes a peft adapter, which this strategy"):
        validate_config(composed(["merge.output_format=adapter"]))
    merge = composed([])["merge"]
    assert merge["output_format"] == "model" and merge["adapter_rank"] is None
    before = {k: v for k, v in merge.items() if k not in ("output_format", "adapter_rank")}
    assert merge_config_for_key(merge) == merge_config_for_key(before)
    assert merge_config_for_key({**merge, "output_format": "adapter", "adapter_rank": 4})["adapter_rank"] == 4
